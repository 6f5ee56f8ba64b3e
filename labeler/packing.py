"""Cutting ordered work into contiguous runs (pure logic, no I/O): a folder's files into Ray
tasks by bytes, row groups into tasks by rows, a recording's speech regions into Whisper
windows by seconds. Model modules may import it (``tests/labeler/test_model_imports.py``)."""

from __future__ import annotations

from typing import Sequence


def runs_by_weight(weights: Sequence[float], target: float) -> list[list[int]]:
    """The positions of ``weights`` in contiguous runs of about ``target`` each, in order: a
    run ends before the item that would take it past ``target`` (and holds one at least).
    How work is cut into Ray tasks (files by bytes, row groups or pieces by rows) and a
    recording's speech regions into Whisper windows (by seconds)."""
    runs: list[list[int]] = []
    held = 0.0
    for k, w in enumerate(weights):
        if not runs or (runs[-1] and held + w > target):
            runs.append([])
            held = 0.0
        runs[-1].append(k)
        held += w
    return runs
