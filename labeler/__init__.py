"""lanser's labeler: unlabeled speech -> weak emotion labels (LanSER), on Ray Data.

Importing this package is cheap: torch, transformers, faster_whisper and vllm are
imported only inside the stages and model wrappers that need them.

    from labeler import LabelConfig, run_labeling
    result = run_labeling(LabelConfig(input="clips/", output="out/", taxonomy="ekman"))
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LabelConfig", "run_labeling", "load_taxonomy", "__version__"]


def __getattr__(name):  # lazy, so `import labeler` stays fast
    if name == "LabelConfig":
        from labeler.config import LabelConfig

        return LabelConfig
    if name == "run_labeling":
        from labeler.pipeline import run_labeling

        return run_labeling
    if name == "load_taxonomy":
        from labeler.taxonomy import load_taxonomy

        return load_taxonomy
    raise AttributeError(name)
