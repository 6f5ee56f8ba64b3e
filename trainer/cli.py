"""``lanser-train``: pretrain, finetune, evaluate and sweep, each driven by a YAML config.

    lanser-train pretrain --config trainer/configs/pretrain.yaml --set train.epochs=5

Joins the Ray cluster in ``RAY_ADDRESS`` when set, else starts a local Ray. Exit status: 0 done, 2 invalid config or command line (any
:class:`labeler.errors.ConfigError`), 1 the job failed (one line on stderr says why;
``LANSER_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import EvaluateConfig, FinetuneConfig, PretrainConfig, SweepConfig

    JobConfig = PretrainConfig | FinetuneConfig | EvaluateConfig | SweepConfig

PROG = "lanser-train"

COMMANDS = {
    "pretrain": "train an SER model on a weak-labels table",
    "finetune": "fine-tune on a labeled corpus (RAVDESS, CREMA-D, IEMOCAP, manifest), optionally from a pretrained checkpoint",
    "evaluate": "UA / WA / macro-F1 / confusion matrix of a checkpoint on a split; optional embedding export",
    "sweep": "label-efficiency sweep: pretrained vs from scratch at shares of the labeled training split",
}

#: explicit flag -> config field it overrides (``--set`` reaches every field).
FLAGS = {
    "output_dir": "output_dir",
    "name": "name",
    "storage_path": "storage_path",
    "num_workers": "scaling.num_workers",
    "use_gpu": "scaling.use_gpu",
    "epochs": "train.epochs",
    "init_checkpoint": "init_checkpoint",
    "checkpoint": "checkpoint",
    "split": "split",
    "embeddings": "embeddings",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train and evaluate speech-emotion models from LanSER weak labels, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", help="YAML config (its first line is the command that runs it)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set train.epochs=3 (value read as YAML; repeatable)")
        p.add_argument("--output-dir", help="directory for the report, plots, embeddings")
        p.add_argument("--no-progress", action="store_true", help="hide Ray Data's progress bars (the config's progress: false)")
        if name == "evaluate":
            p.add_argument("--checkpoint", help="checkpoint directory, or a run's output_dir")
            p.add_argument("--split", choices=["train", "val", "test", "all"])
            p.add_argument("--embeddings", action="store_true", default=None, help="export utterance embeddings as Parquet")
            continue
        p.add_argument("--name", help="run name (rerunning with the same name resumes)")
        p.add_argument("--storage-path", help="checkpoint storage (local path, s3://, gs://)")
        p.add_argument("--num-workers", type=int, help="Ray Train workers")
        p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
        p.add_argument("--epochs", type=int)
        if name in ("finetune", "sweep"):
            p.add_argument("--init-checkpoint", help="pretrained checkpoint, or a pretrain run's output_dir")
    return parser


def overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``(config key, value)`` pairs from ``--set`` and the shortcut flags, in that order."""
    from trainer.config import parse_set

    pairs = [parse_set(item) for item in args.set]
    pairs += [(key, getattr(args, flag)) for flag, key in FLAGS.items() if getattr(args, flag, None) is not None]
    if args.no_progress:
        pairs.append(("progress", False))
    return pairs


def connect_ray(cfg: JobConfig) -> str:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray; set Ray Data's context once
    (in the driver: Ray Train hands the driver's context to its workers and datasets)."""
    import ray
    import ray.data

    address = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = cfg.progress
    return address or "local"


def _run(command: str, cfg: JobConfig) -> dict[str, Any]:
    if command == "pretrain":
        from trainer.jobs import pretrain

        return pretrain(cfg)
    if command == "finetune":
        from trainer.jobs import finetune

        return finetune(cfg)
    if command == "evaluate":
        from trainer.evaluate import evaluate

        return evaluate(cfg)
    from trainer.sweep import sweep

    return sweep(cfg)


def _summary(command: str, report: dict[str, Any], output_dir: str) -> str:
    if command == "sweep":
        return f"sweep done: {len(report['results'])} fine-tunes; {os.path.join(output_dir, 'sweep.json')}, {report['plot']}"
    if command == "evaluate":
        m = report.get("metrics")
        scores = f"UA {m['ua']:.3f} WA {m['wa']:.3f} macro-F1 {m['macro_f1']:.3f}" if m else report.get("metrics_skipped", "")
        return f"evaluate {report['split']}: {report['scored']} utterances, {scores}; {os.path.join(output_dir, 'evaluation.json')}"
    best = report["best_checkpoint"]
    line = f"{command} done: {report['epochs_completed']} epochs, best {best['metric']} {best['value']:.3f} (epoch {best['epoch']})"
    test = (report.get("test") or {}).get("metrics")
    if test:
        line += f", test UA {test['ua']:.3f} WA {test['wa']:.3f}"
    return line + f"; {os.path.join(output_dir, 'report.json')}"


def _reason(exc: BaseException) -> str:
    """One line from an exception, digging the root cause out of Ray's wrapped tracebacks."""
    text = str(exc).strip()
    causes = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[A-Za-z_][\w.]*(Error|Exception)\b.*:", ln)]
    line = causes[-1] if causes else (text.splitlines()[0] if text else type(exc).__name__)
    if not causes and text:
        line = f"{type(exc).__name__}: {line}"
    return " ".join(line.split())[:1000]


def main(argv: list[str] | None = None) -> int:
    from trainer.config import load_config
    from trainer.errors import ConfigError

    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.command, args.config, overrides(args))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        where = connect_ray(cfg)
        print(f"{PROG} {args.command}: Ray {where}", flush=True)
        report = _run(args.command, cfg)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to turn any failure into one line
        if os.environ.get("LANSER_DEBUG"):
            raise
        print(f"{PROG}: error: {_reason(exc)}", file=sys.stderr)
        return 1
    print(_summary(args.command, report, cfg.output_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
