"""Writing and reading the JSON reports a job leaves in its ``output_dir`` (``report.json``,
``evaluation.json``, ``sweep.json``), and the epoch numbering they share with checkpoints.

Epochs are numbered from 1 (epoch 1 is the first pass over the training data) everywhere a
user reads them: the console, ``report.json`` (``history[j].epoch``,
``best_checkpoint.epoch``, ``attempts[i].start_epoch``), ``sweep.json`` (``best_val``), a
checkpoint's ``meta.json`` and its ``checkpoint_epoch_NNNN`` directory. Files that say so
carry ``"epoch_base": 1``; files written before (without the key) numbered epochs from 0
and are renumbered by :func:`renumber_epochs` when read back.
"""

from __future__ import annotations

import json
import os
from typing import Any

REPORT = "report.json"

#: The number of the first epoch, recorded as ``epoch_base`` in report.json and meta.json.
EPOCH_BASE = 1


def renumber_epochs(doc: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``meta.json`` or a run's ``report.json``, as loaded, with its epochs
    numbered from 1 (renumbered in place; returned).

    The one place where files written before epochs were numbered from 1 (no
    ``epoch_base``; 0-based) are converted: :func:`trainer.checkpoint.read_meta` reads every
    ``meta.json`` through it, so a run begun by an older version resumes at the right epoch
    (the recipe continues at ``meta["epoch"] + 1``), and :func:`completed_report` reads
    every ``report.json`` through it, so a sweep rerun that reuses finished fine-tunes
    reports their best epochs like the new ones. Counts (``epochs_completed``,
    ``train.epochs``) are not epoch numbers and stay as they are.
    """
    base = doc.get("epoch_base", 0)
    shift = EPOCH_BASE - base
    if shift:
        if isinstance(doc.get("epoch"), int):  # meta.json: the last epoch completed
            doc["epoch"] += shift
        for key in ("metrics", "final_metrics", "best", "best_checkpoint"):
            entry = doc.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("epoch"), int):
                entry["epoch"] += shift
        for entry in doc.get("history") or []:
            entry["epoch"] += shift
        for attempt in doc.get("attempts") or []:
            attempt["start_epoch"] += shift
    doc["epoch_base"] = EPOCH_BASE
    return doc


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a report)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def completed_report(output_dir: str) -> dict[str, Any] | None:
    """``<output_dir>/report.json`` of a training job that completed (epochs numbered from
    1, see :func:`renumber_epochs`), else None."""
    path = os.path.join(output_dir, REPORT)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    return renumber_epochs(report) if report.get("status") == "completed" else None
