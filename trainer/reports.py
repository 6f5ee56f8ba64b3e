"""Writing and reading the JSON reports a job leaves in its ``output_dir`` (``report.json``,
``evaluation.json``, ``sweep.json``)."""

from __future__ import annotations

import json
import os
from typing import Any

REPORT = "report.json"


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a report)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def completed_report(output_dir: str) -> dict[str, Any] | None:
    """``<output_dir>/report.json`` of a training job that completed, else None."""
    path = os.path.join(output_dir, REPORT)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    return report if report.get("status") == "completed" else None
