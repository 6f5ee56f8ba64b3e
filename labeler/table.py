"""Writing a run's tables: a Ray Data sink into a staging area, then an all-at-once commit.

Write tasks put their part files under ``<root>/_staging/<run_id>/`` (readers never look
there: ``_``-prefixed folders are hidden from Spark/Hive, and lanser's documented globs
start at ``labels/`` and ``transcripts/``). When every row is written and the counts add
up, :func:`commit` moves the run's folder into its partition in one rename (atomic on a
local or POSIX filesystem and HDFS) and then writes ``runs/<run_id>.json``, the run
manifest, with ``status: committed``. On object stores, where a folder move is a copy,
the manifest is the commit point: a reader that needs strict all-or-nothing visibility
joins with committed runs (see README).

Part files are named by write-task index, so a retried write task overwrites its own
file instead of adding a duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections import Counter
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from labeler import schema as S
from labeler.errors import CommitError
from labeler.io import filesystem, join, redact

TIMING_COLUMNS = ("t_decode", "t_asr", "t_score")


def labels_partition(root: str, taxonomy: str, version: str, run_id: str) -> str:
    return join(root, "labels", f"taxonomy={taxonomy}", f"taxonomy_version={version}", f"run_id={run_id}")


def transcripts_partition(root: str, run_id: str) -> str:
    return join(root, "transcripts", f"run_id={run_id}")


def manifest_path(root: str, run_id: str) -> str:
    return join(root, "runs", f"{run_id}.json")


def staging_dir(root: str, run_id: str) -> str:
    return join(root, "_staging", run_id)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RunSink(Datasink):
    """Writes the labels and transcripts part files of one run into its staging folder."""

    def __init__(self, root: str, run_id: str, rows_per_file: int, compression: str = "zstd") -> None:
        self.root = root
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.compression = None if compression == "none" else compression
        self.stats: Optional[dict[str, Any]] = None

    @property
    def min_rows_per_write(self) -> Optional[int]:
        return self.rows_per_file

    def on_write_start(self, schema=None) -> None:
        fs, base = filesystem(staging_dir(self.root, self.run_id))
        for sub in ("labels", "transcripts"):
            fs.create_dir(posixpath.join(base, sub), recursive=True)

    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows": 0}
        table = pa.concat_tables(tables, promote_options="default")
        created = pa.array([now_utc()] * table.num_rows, S.TIMESTAMP)
        table = table.append_column("created_at", created)
        stats = summarize_rows(table)
        labels = S.conform(table, S.LABELS_FILE_SCHEMA)
        decoded = table.filter(pc.is_valid(table.column("duration_s")))
        transcripts = S.conform(decoded, S.TRANSCRIPTS_FILE_SCHEMA)
        fs, base = filesystem(staging_dir(self.root, self.run_id))
        name = f"part-{ctx.task_idx:05d}.parquet"
        files = []
        for sub, tbl in (("labels", labels), ("transcripts", transcripts)):
            if tbl.num_rows == 0:
                continue
            path = posixpath.join(base, sub, name)
            with fs.open_output_stream(path) as f:
                pq.write_table(tbl, f, compression=self.compression)
            files.append((sub, name, tbl.num_rows))
        stats["files"] = files
        return stats

    def on_write_complete(self, write_result) -> None:
        self.stats = merge_stats(write_result.write_returns)


def summarize_rows(table: pa.Table) -> dict[str, Any]:
    """Counts and sums of one written block (merged across tasks by :func:`merge_stats`)."""
    status = table.column("status").to_pylist()
    labels = table.column("label").to_pylist()
    reasons = table.column("abstain_reason").to_pylist()
    conf = [c for c, s in zip(table.column("confidence").to_pylist(), status) if s == S.STATUS_LABELED]
    dur = [d for d in table.column("duration_s").to_pylist() if d is not None]
    out: dict[str, Any] = {
        "rows": table.num_rows,
        "status": dict(Counter(status)),
        "labels": dict(Counter(x for x in labels if x is not None)),
        "abstain_reasons": dict(Counter(x for x in reasons if x is not None)),
        "confidence_hist": histogram(conf),
        "audio_seconds": float(sum(dur)),
        "stage_seconds": {c: float(pc.sum(table.column(c)).as_py() or 0.0) for c in TIMING_COLUMNS if c in table.column_names},
        "errors_sample": [e for e in table.column("error").to_pylist() if e][:5],
    }
    return out


def histogram(values: list[float], bins: int = 10) -> list[int]:
    counts = [0] * bins
    for v in values:
        if v is None:
            continue
        counts[min(int(v * bins), bins - 1)] += 1
    return counts


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "rows": 0, "status": Counter(), "labels": Counter(), "abstain_reasons": Counter(),
        "confidence_hist": [0] * 10, "audio_seconds": 0.0, "stage_seconds": Counter(),
        "errors_sample": [], "files": [],
    }
    for p in parts:
        if not p or not p.get("rows"):
            continue
        total["rows"] += p["rows"]
        for k in ("status", "labels", "abstain_reasons", "stage_seconds"):
            total[k].update(p[k])
        total["confidence_hist"] = [a + b for a, b in zip(total["confidence_hist"], p["confidence_hist"])]
        total["audio_seconds"] += p["audio_seconds"]
        total["errors_sample"] = (total["errors_sample"] + p["errors_sample"])[:10]
        total["files"] += p["files"]
    for k in ("status", "labels", "abstain_reasons", "stage_seconds"):
        total[k] = dict(sorted(total[k].items()))
    return total


def read_manifest(root: str, run_id: str) -> Optional[dict[str, Any]]:
    fs, path = filesystem(manifest_path(root, run_id))
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def write_json_atomic(uri: str, payload: dict[str, Any]) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    data = json.dumps(payload, indent=2, sort_keys=False, default=str).encode("utf-8")
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def _move_dir(fs, src: str, dst: str) -> None:
    import pyarrow.fs as pafs

    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        raise CommitError(f"cannot commit: {dst} already exists (a run with this id was committed before)")
    fs.create_dir(posixpath.dirname(dst), recursive=True)
    try:
        fs.move(src, dst)  # one rename on local/POSIX filesystems and HDFS
        return
    except (OSError, NotImplementedError, pa.ArrowNotImplementedError):
        pass
    # Object stores: copy file by file; the run manifest written afterwards is the commit point.
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            rel = info.path[len(src.rstrip("/")) + 1:]
            fs.copy_file(info.path, posixpath.join(dst, rel))
    fs.delete_dir(src)


def commit(
    root: str,
    run_id: str,
    taxonomy: str,
    version: str,
    expected_rows: int,
    stats: dict[str, Any],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Publish a staged run: check counts, move partitions into place, write the manifest last."""
    if stats["rows"] != expected_rows:
        raise CommitError(
            f"run {run_id}: {expected_rows} input rows but {stats['rows']} rows written; "
            f"nothing was published (staged files are under {staging_dir(root, run_id)})"
        )
    fs, stage = filesystem(staging_dir(root, run_id))
    _, labels_dst = filesystem(labels_partition(root, taxonomy, version, run_id))
    _, trans_dst = filesystem(transcripts_partition(root, run_id))
    import pyarrow.fs as pafs

    _move_dir(fs, posixpath.join(stage, "labels"), labels_dst)
    if fs.get_file_info(pafs.FileSelector(posixpath.join(stage, "transcripts"), allow_not_found=True)):
        _move_dir(fs, posixpath.join(stage, "transcripts"), trans_dst)
    fs.delete_dir(stage)
    manifest = dict(manifest)
    manifest.update(
        status="committed",
        committed_at=now_utc().isoformat(),
        tables={
            "labels": redact(labels_partition(root, taxonomy, version, run_id)),
            "transcripts": redact(transcripts_partition(root, run_id)),
        },
    )
    write_json_atomic(manifest_path(root, run_id), manifest)
    return manifest
