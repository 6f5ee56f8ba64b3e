"""Writing a run's tables: a Ray Data sink into a staging area, then an all-at-once commit.

Write tasks put their part files under ``<root>/_staging/<run_id>/`` (readers never look
there: ``_``-prefixed folders are hidden from Spark/Hive, and lanser's documented globs
start at ``labels/`` and ``transcripts/``). When every row is written and the counts add
up, :func:`commit` moves the run's folder into its partition in one rename (atomic on a
local or POSIX filesystem and HDFS) and then writes ``runs/<run_id>.json``, the run
manifest, with ``status: committed``. On object stores, where a folder move is a copy,
the manifest is the commit point: a reader that needs strict all-or-nothing visibility
joins with committed runs (see README).

Part files are named by attempt and write-task index and written to a temporary name
first, so a retried write task overwrites its own file instead of adding a duplicate, and
a killed one leaves no half-written part behind. A resumed run adds the parts of its new
attempt beside those of the earlier ones; the commit checks that together they hold every
input row exactly once.
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
COUNT_COLUMNS = ("n_pairs_cached", "n_pairs_memo", "n_pairs_scored")


def scores_partition(root: str, scorer_key: str, run_id: str) -> str:
    return join(root, "scores", f"scorer_key={scorer_key}", f"run_id={run_id}")


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

    def __init__(self, root: str, run_id: str, attempt: str, rows_per_file: int, hypotheses: list[str],
                 scorer_key: str, compression: str = "zstd") -> None:
        self.root = root
        self.run_id = run_id
        self.attempt = attempt
        self.rows_per_file = rows_per_file
        self.hypotheses = hypotheses
        self.scorer_key = scorer_key
        self.compression = None if compression == "none" else compression
        self.stats: Optional[dict[str, Any]] = None

    @property
    def min_rows_per_write(self) -> Optional[int]:
        return self.rows_per_file

    def on_write_start(self, schema=None) -> None:
        fs, base = filesystem(staging_dir(self.root, self.run_id))
        for sub in ("labels", "transcripts", "scores"):
            fs.create_dir(posixpath.join(base, sub), recursive=True)

    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"rows": 0}
        table = pa.concat_tables(tables, promote_options="default")
        created = pa.array([now_utc()] * table.num_rows, S.TIMESTAMP)
        table = redact_uri_column(table.append_column("created_at", created))
        stats = summarize_rows(table)
        labels = S.conform(table, S.LABELS_FILE_SCHEMA)
        # The transcript cache gets what this run transcribed (or failed to), not cache hits.
        fresh = pc.and_(pc.is_valid(table.column("duration_s")), pc.invert(table.column("asr_cached")))
        transcripts = S.conform(table.filter(fresh), S.TRANSCRIPTS_FILE_SCHEMA)
        scores = self._new_scores(table)
        fs, base = filesystem(staging_dir(self.root, self.run_id))
        name = f"part-{self.attempt}-{ctx.task_idx:05d}.parquet"
        files = []
        for sub, tbl in (("labels", labels), ("transcripts", transcripts), ("scores", scores)):
            if tbl.num_rows == 0:
                continue
            path = posixpath.join(base, sub, name)
            with fs.open_output_stream(path + ".tmp") as f:
                pq.write_table(tbl, f, compression=self.compression)
            fs.move(path + ".tmp", path)  # a part is either complete or absent
            files.append((sub, name, tbl.num_rows))
        stats["files"] = files
        return stats

    def _new_scores(self, table: pa.Table) -> pa.Table:
        keys, hyps, raws, shas, now = [], [], [], [], now_utc()
        cols = [table.column(c).to_pylist() for c in ("new_pair_keys", "new_pair_hyp", "new_pair_raw", "text_sha256", "scorer")]
        scorer = None
        for k, h, r, sha, sc in zip(*cols):
            if not k:
                continue
            scorer = sc
            keys += k
            hyps += [self.hypotheses[i] for i in h]
            raws += r
            shas += [sha] * len(k)
        return S.conform(pa.table({
            "pair_key": pa.array(keys, pa.uint64()), "text_sha256": pa.array(shas, pa.string()),
            "hypothesis": pa.array(hyps, pa.string()), "raw_score": pa.array(raws, pa.float32()),
            "scorer": pa.array([scorer] * len(keys), pa.string()), "created_at": pa.array([now] * len(keys), S.TIMESTAMP),
        }), S.SCORES_FILE_SCHEMA)

    def on_write_complete(self, write_result) -> None:
        self.stats = merge_stats(write_result.write_returns)


def redact_uri_column(table: pa.Table) -> pa.Table:
    """Tables store the URI without credentials: the stages read the real one, the
    ``uri`` column gets ``s3://***@bucket/...`` (see :func:`labeler.io.redact`)."""
    uris = table.column("uri").to_pylist()
    clean = [redact(u) for u in uris]
    if clean == uris:
        return table
    return table.set_column(table.column_names.index("uri"), "uri", pa.array(clean, pa.string()))


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
        "error_stages": dict(Counter(e.split(":", 1)[0] for e in table.column("error").to_pylist() if e)),
        "confidence_hist": histogram(conf),
        "audio_seconds": float(sum(dur)),
        "stage_seconds": {c: float(pc.sum(table.column(c)).as_py() or 0.0) for c in TIMING_COLUMNS if c in table.column_names},
        "cache": {c: int(pc.sum(table.column(c)).as_py() or 0) for c in COUNT_COLUMNS if c in table.column_names},
        "errors_sample": [e for e in table.column("error").to_pylist() if e][:5],
    }
    if "asr_cached" in table.column_names:
        cached = table.column("asr_cached")
        out["cache"]["transcripts_from_cache"] = int(pc.sum(cached).as_py() or 0)
        ran = pc.and_(pc.invert(cached), pc.is_valid(table.column("text")))
        out["cache"]["transcribed"] = int(pc.sum(ran).as_py() or 0)
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
        "confidence_hist": [0] * 10, "audio_seconds": 0.0, "stage_seconds": Counter(), "cache": Counter(),
        "errors_sample": [], "files": [],
    }
    for p in parts:
        if not p or not p.get("rows"):
            continue
        total["rows"] += p["rows"]
        for k in ("status", "labels", "abstain_reasons", "stage_seconds", "cache"):
            total[k].update(p.get(k, {}))
        total["confidence_hist"] = [a + b for a, b in zip(total["confidence_hist"], p["confidence_hist"])]
        total["audio_seconds"] += p["audio_seconds"]
        total["errors_sample"] = (total["errors_sample"] + p["errors_sample"])[:10]
        total["files"] += p["files"]
    for k in ("status", "labels", "abstain_reasons", "stage_seconds", "cache"):
        total[k] = dict(sorted(total[k].items()))
    return total


def manifest_run_ids(root: str) -> list[str]:
    """Ids of the runs with a manifest under ``<root>/runs/``, oldest first (ids sort by
    time); ``.tmp`` files are not manifests."""
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, "runs"))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name[:-5] for i in infos if i.base_name.endswith(".json"))


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


def read_staged_labels(root: str, run_id: str, columns: Optional[list[str]] = None) -> pa.Table:
    """Every complete labels part staged for ``run_id`` (all attempts); ``.tmp`` files are ignored."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, stage = filesystem(staging_dir(root, run_id))
    infos = fs.get_file_info(pafs.FileSelector(posixpath.join(stage, "labels"), allow_not_found=True))
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not paths:
        return S.LABELS_FILE_SCHEMA.empty_table().select(columns) if columns else S.LABELS_FILE_SCHEMA.empty_table()
    return pads.dataset(paths, filesystem=fs, format="parquet", schema=S.LABELS_FILE_SCHEMA).to_table(columns=columns)


def _has_files(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return any(i.type == pafs.FileType.File for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def commit(
    root: str,
    run_id: str,
    taxonomy: str,
    version: str,
    scorer_key: str,
    expected_rows: int,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Publish a staged run: check every row is there exactly once, move the partitions into
    place, write the manifest last."""
    staged = read_staged_labels(root, run_id)
    ids = staged.column("utt_id")
    unique = pc.count_distinct(ids).as_py()
    if staged.num_rows != expected_rows or unique != staged.num_rows:
        raise CommitError(
            f"run {run_id}: {expected_rows} input rows but {staged.num_rows} rows staged ({unique} distinct utt_id); "
            f"nothing was published (staged files are under {redact(staging_dir(root, run_id))})"
        )
    totals = summarize_rows(staged)
    fs, stage = filesystem(staging_dir(root, run_id))
    tables = {
        "labels": labels_partition(root, taxonomy, version, run_id),
        "transcripts": transcripts_partition(root, run_id),
        "scores": scores_partition(root, scorer_key, run_id),
    }
    published = {}
    for sub, dst in tables.items():
        src = posixpath.join(stage, sub)
        if _has_files(fs, src):
            _move_dir(fs, src, filesystem(dst)[1])
            published[sub] = redact(dst)
    fs.delete_dir(stage)
    manifest = dict(manifest)
    manifest["counts"] = {
        **manifest.get("counts", {}),
        "output_rows": staged.num_rows,
        "status": totals["status"],
        "labels": dict(sorted(totals["labels"].items())),
        "abstain_reasons": totals["abstain_reasons"],
        "error_stages": dict(sorted(totals["error_stages"].items())),
    }
    manifest["confidence_histogram"] = {"bins": [i / 10 for i in range(11)], "counts": totals["confidence_hist"]}
    manifest["audio_seconds"] = round(totals["audio_seconds"], 3)
    manifest.update(status="committed", committed_at=now_utc().isoformat(), tables=published)
    write_json_atomic(manifest_path(root, run_id), manifest)
    return manifest
