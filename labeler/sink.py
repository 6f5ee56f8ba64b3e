"""Write: the labels table of a run, streamed by Ray Data's write tasks into its staging folder.

Each write task writes one part file under ``<root>/_staging/<run_id>/labels/``, named by
attempt and task index and written under a temporary name first, so a retried task
overwrites its own file and a killed one leaves nothing half-written. With the part goes a
summary of its rows (outcomes, labels, confidence histogram, audio seconds), stored in the
file's Parquet footer: the commit (:func:`labeler.runs.commit`) adds those up from the
footers of every attempt's parts instead of reading the rows again.

The sink writes data rows only; cache entries and stage counters reach the staging folder
and the manifest through the run's collector (:mod:`labeler.collector`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any, Iterable, Optional

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from labeler import schema as S
from labeler.io import join, redact_uri_column, write_parquet_atomic

#: Parquet footer key of a labels part's row summary.
SUMMARY_KEY = b"lanser.summary"


class LabelsSink(Datasink):
    """Writes the labels part files of one run attempt into the run's staging folder."""

    def __init__(self, root: str, run_id: str, attempt: str, rows_per_file: int, compression: str = "zstd") -> None:
        self.directory = join(S.staging_dir(root, run_id), "labels")
        self.attempt = attempt
        self.rows_per_file = rows_per_file
        self.compression = compression
        self.stats: Optional[dict[str, Any]] = None

    @property
    def min_rows_per_write(self) -> Optional[int]:
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows": 0}
        table = pa.concat_tables(tables, promote_options="default")
        if "deferred" in table.column_names:  # copies held back for the run's second pass
            import pyarrow.compute as pc

            table = table.filter(pc.invert(pc.fill_null(table.column("deferred"), False)))
            if not table.num_rows:
                return {"rows": 0}
        created = pa.array([dt.datetime.now(dt.timezone.utc)] * table.num_rows, S.TIMESTAMP)
        labels = S.conform(redact_uri_column(table.append_column("created_at", created)), S.LABELS_FILE_SCHEMA)
        summary = summarize_rows(labels, segmented_sources(table))
        name = f"part-{self.attempt}-{ctx.task_idx:05d}.parquet"
        write_part(self.directory, name, labels, summary, self.compression)
        return {**summary, "files": [("labels", name, labels.num_rows)]}

    def on_write_complete(self, write_result) -> None:
        self.stats = merge_stats(write_result.write_returns)


def write_part(directory: str, name: str, labels: pa.Table, summary: dict[str, Any], compression: str) -> None:
    """A labels part with its row summary in the footer, written atomically."""
    labels = labels.replace_schema_metadata({SUMMARY_KEY: json.dumps(summary).encode()})
    write_parquet_atomic(directory, name, labels, compression)


def segmented_sources(table: pa.Table) -> dict[str, int]:
    """{source_id: its utterance rows} for the files of ``table`` that give several rows: with
    them the commit (and a resumed run) tells a complete file from one cut short."""
    if "source_utterances" not in table.column_names:
        return {}
    n = table.column("source_utterances").to_pylist()
    return {s: k for s, k in zip(table.column("source_id").to_pylist(), n) if k is not None and k > 1}


#: Upper edges of the utterance-length histogram, seconds (the last bin is everything longer).
LENGTH_BINS = tuple(range(1, 16))


def summarize_rows(table: pa.Table, segmented: dict[str, int] | None = None) -> dict[str, Any]:
    """Counts and sums of the rows of one labels part (added up by :func:`merge_stats`)."""
    status = table.column("status").to_pylist()
    index = table.column("segment_index").to_pylist()
    lengths = [e - s for s, e, k in zip(table.column("start_s").to_pylist(), table.column("end_s").to_pylist(), index)
               if k is not None and s is not None and e is not None]
    conf = [c for c, s in zip(table.column("confidence").to_pylist(), status) if s == S.STATUS_LABELED]
    errors = [e for e in table.column("error").to_pylist() if e]
    return {
        "rows": table.num_rows,
        "status": dict(Counter(status)),
        "labels": dict(Counter(x for x in table.column("label").to_pylist() if x is not None)),
        "abstain_reasons": dict(Counter(x for x in table.column("abstain_reason").to_pylist() if x is not None)),
        "error_stages": dict(Counter(e.split(":", 1)[0] for e in errors)),
        "confidence_hist": histogram(conf),
        # a file's duration counts once: on its first row (segment 0, or its only row)
        "audio_seconds": float(sum(d for d, k in zip(table.column("duration_s").to_pylist(), index) if d is not None and not k)),
        "sources": sum(1 for k in index if not k),
        "utterances": len(lengths),
        "utterance_seconds": float(sum(lengths)),
        "utterance_length_hist": [sum(1 for x in lengths if lo <= x < hi) for lo, hi in zip((0, *LENGTH_BINS), (*LENGTH_BINS, float("inf")))],
        "segmented": dict(segmented or {}),
        "errors_sample": errors[:5],
    }


def histogram(values: list[float], bins: int = 10) -> list[int]:
    counts = [0] * bins
    for v in values:
        if v is not None:
            counts[min(int(v * bins), bins - 1)] += 1
    return counts


_COUNTERS = ("status", "labels", "abstain_reasons", "error_stages")


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of part summaries (and the files they name)."""
    total: dict[str, Any] = {"rows": 0, **{k: Counter() for k in _COUNTERS}, "confidence_hist": [0] * 10,
                             "audio_seconds": 0.0, "sources": 0, "utterances": 0, "utterance_seconds": 0.0,
                             "utterance_length_hist": [0] * (len(LENGTH_BINS) + 1), "segmented": {},
                             "errors_sample": [], "files": []}
    for p in parts:
        if not p or not p.get("rows"):
            continue
        total["rows"] += p["rows"]
        for k in _COUNTERS:
            total[k].update(p.get(k, {}))
        total["confidence_hist"] = [a + b for a, b in zip(total["confidence_hist"], p["confidence_hist"])]
        total["utterance_length_hist"] = [a + b for a, b in zip(total["utterance_length_hist"], p["utterance_length_hist"])]
        for k in ("audio_seconds", "sources", "utterances", "utterance_seconds"):
            total[k] += p[k]
        total["segmented"].update(p["segmented"])
        total["errors_sample"] = (total["errors_sample"] + p["errors_sample"])[:10]
        total["files"] += p.get("files", [])
    for k in _COUNTERS:
        total[k] = dict(sorted(total[k].items()))
    return total


def read_part_summaries(fs, paths: list[str]) -> list[dict[str, Any]]:
    """The row summaries stored in the footers of labels parts (footers only, no rows)."""
    import pyarrow.parquet as pq

    out = []
    for path in paths:
        meta = pq.read_metadata(path, filesystem=fs).metadata or {}
        if SUMMARY_KEY not in meta:
            raise ValueError(f"{path}: a labels part without its row summary (written by another lanser version?)")
        out.append(json.loads(meta[SUMMARY_KEY]))
    return out
