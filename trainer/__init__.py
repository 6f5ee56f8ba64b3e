"""lanser's trainer: speech-emotion-recognition models from LanSER weak labels, on Ray Train.

Importing this package is cheap: torch and ray are imported only inside the functions that
need them.

    from trainer import load_config, pretrain, finetune
    from trainer.evaluate import evaluate
    from trainer.sweep import sweep

    report = pretrain(load_config("pretrain", "trainer/configs/pretrain.yaml"))
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_config", "pretrain", "finetune", "__version__"]


def __getattr__(name: str):  # lazy, so `import trainer` stays fast
    if name == "load_config":
        from trainer.config import load_config

        return load_config
    if name in ("pretrain", "finetune"):
        from trainer import jobs

        return getattr(jobs, name)
    raise AttributeError(name)
