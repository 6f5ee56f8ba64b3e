"""The life of a run, label or relabel alike: claim, resume, execute, commit, find again.

:func:`run` carries out a :class:`RunPlan` (which rows go in, through which stages; see
:mod:`labeler.pipeline` for the two plans):

1. **Claim.** A run's *key* hashes everything that decides its output (input, taxonomy
   version and hypotheses, ASR and scorer settings, abstain rules). The newest unfinished
   run under ``_staging/`` with the same key whose lock is free is resumed; else a new,
   time-sortable run id is locked (:mod:`labeler.lock`). Two concurrent runs never write
   into one staging folder.
2. **Resume.** Input rows already in the run's staged labels parts are skipped.
3. **Execute.** The rows go through the plan's stages (:func:`labeler.stages.base.chain`)
   into the labels sink (:mod:`labeler.sink`); stage counters and cache entries go to the
   run's collector (:mod:`labeler.collector`).
4. **Commit.** :func:`commit` checks that the staged parts of all attempts hold every input
   row exactly once, moves the run's folders into their partitions (one rename on a local
   or POSIX filesystem and HDFS) and writes ``runs/<run_id>.json``, the manifest, last.
   On object stores, where a folder move is a copy, the manifest is the commit point:
   readers that need all-or-nothing visibility join with committed runs (README).

So a killed run, re-run with the same command, converges to the table a clean run gives,
with nothing lost or duplicated.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import posixpath
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.config import LabelConfig
from labeler.errors import CommitError, InputError, LanserError, find_lanser_error
from labeler.io import filesystem, join, redact, write_json_atomic
from labeler.packing import runs_by_weight
from labeler.lock import RunLock
from labeler.sources import INPUT_SCHEMA, Listing
from labeler.stages.base import Stage, StageContext
from labeler.taxonomy import Taxonomy


@dataclass
class RunResult:
    run_id: str
    manifest: dict[str, Any]
    output: str

    @property
    def labels_path(self) -> str:
        return self.manifest["tables"]["labels"]


@dataclass
class StreamedInputs:
    """Input rows that Ray Data reads in the workers and streams through the stages; the
    driver never gathers them (a relabel's source run: its transcripts' text stays out of the
    driver). ``make`` builds the dataset once Ray is up; ``num_rows`` comes from the Parquet
    footers; ``skip`` is the ``utt_id``s a resumed run has already staged."""

    make: Callable[[], Any]  # () -> ray.data.Dataset
    num_rows: int
    column_names: list[str]
    skip: Optional[pa.Array] = None

    def dataset(self) -> Any:
        ds = self.make()
        if self.skip is not None and len(self.skip):
            ds = ds.map_batches(drop_ids, batch_format="pyarrow", fn_kwargs={"ids": self.skip}, zero_copy_batch=True)
        return ds


def drop_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    """``batch`` without the rows whose ``utt_id`` is in ``ids``."""
    import pyarrow.compute as pc

    return batch.filter(pc.invert(pc.is_in(batch.column("utt_id"), value_set=ids)))


@dataclass
class ListedInputs:
    """A label run's input rows ready for the stages: the listing's parts (less what a
    resumed run staged) in the object store, each with the sha256 earlier runs read for its
    files beside them (``known_sha256``, null when unknown). The driver holds refs and row
    counts only: Ray tasks split the parts and cut the stages' input blocks from them
    (:func:`split_cached`, :func:`cut_blocks`)."""

    parts: list[Any]  # ObjectRefs of tables: INPUT_SCHEMA and known_sha256
    rows: list[int]

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    @property
    def column_names(self) -> list[str]:
        return [*INPUT_SCHEMA.names, "known_sha256"]

    @property
    def pieces(self) -> list[tuple[Any, int]]:
        return list(zip(self.parts, self.rows))


def known_inputs(root: str, listing: Listing, rehash: bool) -> tuple[ListedInputs, dict[str, int]]:
    """``listing`` as :class:`ListedInputs`: for each file, the sha256 an earlier run read
    with the same URI, size and version (:func:`labeler.cache.known_sources`). A map-reduce
    of Ray tasks joins the listing with the ``sources/`` table: map tasks each read a run of
    its files and split their rows by the listing part whose URI range they fall in, then
    one task per part joins it with its rows. A manifest's parts may overlap in range: then
    each map task's rows are one object that every join task reads, keeping those of its
    range. Neither the table nor the listing reaches the driver; a join task holds a part
    and the rows of its range (the whole table for a listing of one part: a CSV manifest, a
    glob). Returns the inputs and the counts of new and changed files."""
    import ray

    from labeler.cache import read_sources, table_files

    zero = {"sources_new": 0, "sources_changed": 0}
    if not listing.num_rows:
        return ListedInputs([], []), zero
    n = len(listing.parts)
    files = table_files(root, "sources")
    pieces: list[list[Any]] = []
    disjoint = _disjoint(listing.bounds, listing.rows)
    if files:
        groups = file_groups(files, min(len(files), max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))))
        if disjoint:
            split = ray.remote(num_returns=n, max_retries=3)(_split_sources)
            pieces = [split.remote(root, group, listing.bounds, listing.rows) for group in groups]
            pieces = [[p] for p in pieces] if n == 1 else pieces
        else:  # a manifest's parts, whose ranges overlap: each map task's rows are one object all join tasks share
            read = ray.remote(max_retries=3)(read_sources)
            pieces = [[ref] * n for ref in (read.remote(root, group) for group in groups)]
    join = ray.remote(num_returns=2, max_retries=3)(_known_part)
    out = [join.remote(part, offset, rows, rehash, None if disjoint else bounds, *(p[i] for p in pieces))
           for i, (part, offset, rows, bounds) in enumerate(zip(listing.parts, listing.offsets, listing.rows, listing.bounds))]
    counts = ray.get([c for _, c in out])
    return ListedInputs([t for t, _ in out], [c["rows"] for c in counts]), {k: sum(c[k] for c in counts) for k in zero}


def _split_sources(root: str, files: list[str], bounds: list[tuple[Optional[str], Optional[str]]], rows: list[int]) -> Any:
    """The ``sources/`` rows of ``files`` split by the listing part (``bounds``: its least
    and greatest URI; ``(None, None)``: any) their URI falls in; rows of no part's range are
    dropped. The ranges do not overlap (:func:`_disjoint`: a folder's parts, in path order).
    One table (or None) per part, as a map task of :func:`known_inputs` returns them."""
    from labeler.cache import read_sources

    t = read_sources(root, files)
    n = len(bounds)
    if t is None or not t.num_rows:
        out: list[Any] = [None] * n
    else:
        parts = sorted((lo, i) for i, (lo, _) in enumerate(bounds) if lo is not None and rows[i])
        least = np.array([lo for lo, _ in parts] or [""], dtype=object)
        owners = np.array([i for _, i in parts] or [0], np.int64)
        greatest = np.array([bounds[i][1] for _, i in parts] or [""], dtype=object)
        uris = np.array(t.column("uri").fill_null("").to_pylist(), dtype=object)
        at = np.searchsorted(least, uris, side="right") - 1
        ok = (at >= 0) & (uris <= greatest[np.maximum(at, 0)]).astype(bool) if parts else np.zeros(len(uris), bool)
        owner = np.where(ok, owners[np.maximum(at, 0)], n)
        order = np.argsort(owner, kind="stable")
        cut = np.searchsorted(owner[order], np.arange(n + 1))
        t = t.take(pa.array(order, pa.int64()))
        out = [t.slice(cut[i], cut[i + 1] - cut[i]) if cut[i + 1] > cut[i] else None for i in range(n)]
    if t is not None:
        for i, (lo, _) in enumerate(bounds):
            if lo is None and rows[i]:  # a part of any URI (a manifest read here, a glob): every row
                out[i] = t
    return out if n > 1 else out[0]


def _disjoint(bounds: list[tuple[Optional[str], Optional[str]]], rows: list[int]) -> bool:
    """Whether the URI ranges of the listing's non-empty parts overlap nowhere."""
    ranges = sorted((lo, hi) for (lo, hi), n in zip(bounds, rows) if lo is not None and n)
    return all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def _known_part(part: pa.Table, offset: int, rows: int, rehash: bool, bounds: Optional[tuple[Optional[str], Optional[str]]],
                *pieces: Optional[pa.Table]) -> tuple[pa.Table, dict[str, int]]:
    """One listing part, its rows numbered, with ``known_sha256`` from the ``sources/`` rows
    of its range (``pieces``; with ``bounds``, rows of any URI, kept here when in them), and
    its counts."""
    import pyarrow.compute as pc

    from labeler.cache import known_sources
    from labeler.sources import number

    same_part(part, rows)
    have = [p for p in pieces if p is not None and p.num_rows]
    if bounds is not None and bounds[0] is not None:
        lo, hi = bounds
        have = [p.filter(pc.and_(pc.greater_equal(p.column("uri"), lo), pc.less_equal(p.column("uri"), hi))) for p in have]
    t, counts = known_sources(number(part, offset), pa.concat_tables(have) if have else None, rehash)
    return t, {**counts, "rows": t.num_rows}


def same_part(part: pa.Table, rows: int) -> None:
    """Refuse a listing part whose row count is not the one the run planned with: Ray makes
    a part lost with its node again by listing its folders again, and a folder that changed
    since would shift every row number after it. The run fails, and a re-run resumes it."""
    if part.num_rows != rows:
        raise InputError(f"input listing changed during the run: a part lost with its node and listed again has "
                         f"{part.num_rows} files, not {rows}; run again to resume with the folder as it is now")


#: Rows a Ray task of :func:`cut_blocks` cuts into blocks (a run of pieces of about as many).
CUT_TASK_ROWS = 262_144


def cut_blocks(pieces: list[tuple[Any, int]], step: int, ids: Any = None) -> list[Any]:
    """The stages' input blocks of ``step`` rows cut from ``pieces`` (refs to tables, with
    their row counts; empty ones are skipped) in their order; with ``ids`` (a ref to an
    array of ``utt_id``), of those rows only. Ray generator tasks each take a run of pieces
    of about :data:`CUT_TASK_ROWS` rows, so each block is its own object and the driver gets
    refs. Every row is in exactly one block."""
    import ray

    live = [(ref, n) for ref, n in pieces if n]
    cut = ray.remote(max_retries=3)(_cut)
    gens = [cut.remote(step, ids, *(live[i][0] for i in run)) for run in runs_by_weight([n for _, n in live], CUT_TASK_ROWS)]
    return [block for gen in gens for block in gen]


def _cut(step: int, ids: Optional[pa.Array], *pieces: Optional[pa.Table]) -> Iterator[pa.Table]:
    import pyarrow.compute as pc

    have = [p for p in pieces if p is not None and p.num_rows]
    if ids is not None:
        have = [p.filter(pc.is_in(p.column("utt_id"), value_set=ids)) for p in have]
    if not have:
        return
    for block in input_blocks(pa.concat_tables(have), step):
        yield block.combine_chunks()


@dataclass
class RunPlan:
    """What one kind of run does; :func:`run` does the rest."""

    kind: str  # "label" or "relabel"
    taxonomy: Taxonomy
    key: str  # the run key: a re-run with the same key resumes an unfinished run
    read_inputs: Callable[[], Any]  # the input rows (a Listing, a StreamedInputs, or a pa.Table): one per unit, unique utt_id
    stages: tuple[type[Stage], ...]  # in order
    caches: tuple[str, ...] = ("transcripts", "scores")  # caches the stages look up
    preset_cache_counts: Callable[[int], dict[str, int]] = lambda rows: {}  # counters known before any stage runs
    manifest: dict[str, Any] = field(default_factory=dict)  # fields of this kind of run (source run, models)
    unit: str = "source_id"  # what one input row is: a file (label: it gives 1..N rows) or an utterance (relabel: 1 row)
    # the rows left to do, with what earlier runs know of them (label: the sha256 of unchanged files), and counts for the manifest
    prepare: Optional[Callable[[Any], tuple[Any, dict[str, int]]]] = None  # label: Listing -> ListedInputs


def run(cfg: LabelConfig, plan: RunPlan) -> RunResult:
    """Carry out ``plan`` into ``cfg.output``: claimed, resumed, executed, committed."""
    if cfg.run_id:
        existing = read_manifest(cfg.output, cfg.run_id)
        if existing and existing.get("status") == "committed":
            return RunResult(cfg.run_id, existing, cfg.output)  # idempotent: already done
    inputs = plan.read_inputs()
    init_ray(cfg)
    started = time.time()
    run_id, lock = claim_run(cfg.output, plan.key, plan.kind, cfg.run_id)
    try:
        input_rows = inputs.num_rows
        todo, resumed_rows = remaining(inputs, cfg.output, run_id, plan.unit, cfg.out.compression)
        del inputs  # a listing's parts leave the object store once the stages' inputs are made of them
        t0 = time.perf_counter()
        todo, source_counts = plan.prepare(todo) if plan.prepare is not None else (todo, {})
        rows, side, sizes = execute(cfg, plan, run_id, todo) if todo.num_rows else ({"rows": 0}, {}, {})
        wall = time.perf_counter() - t0
        manifest = build_manifest(cfg, plan, run_id, input_rows, resumed_rows, rows, side, sizes, wall, started)
        if plan.prepare is not None:
            decode = side.get("stages", {}).get("decode", {})
            manifest["counts"].update({
                "sources_skipped_by_metadata": int(decode.get("sources_skipped_by_metadata", 0)),
                "sources_read": int(decode.get("audio_files_read", 0)),
                **source_counts,
            })
        manifest = commit(cfg.output, run_id, plan.taxonomy, cfg.scorer.key_hash(), input_rows, manifest, plan.unit)
    finally:
        lock.release()
    write_report_or_warn(cfg.output, manifest)
    return RunResult(run_id, manifest, cfg.output)


def execute(cfg: LabelConfig, plan: RunPlan, run_id: str, todo: Any) -> tuple[dict, dict, dict]:
    """Stream ``todo`` through the plan's stages into the staging folder. Returns the sink's
    row stats, the collector's (stage counters, cache files) and the cache sizes loaded.

    A label run transcribes each distinct audio once: a file whose bytes another input of
    the run has (same sha256) is held back in a first pass, and a second pass over those
    copies finds their transcripts in what the first pass staged."""
    import pyarrow.compute as pc

    from labeler.cache import CacheSource
    from labeler.sink import merge_stats
    from labeler.stages.base import require_stages

    require_stages(plan.stages, todo.column_names)
    ctx, sizes = load_caches(cfg, plan)
    ctx.dedupe = "transcripts" in plan.caches
    passes = []
    step = plan.stages[0].resources(cfg)["batch_size"]
    if isinstance(todo, ListedInputs):
        # files unchanged and transcribed before: a pass of their own, in large blocks that
        # each stage takes whole (no audio is opened, so a row costs microseconds per stage)
        cached, rest = split_cached(cfg, todo, ctx, step)
        if cached:
            passes.append(_pass(cfg, plan, run_id, cached, ctx, blocked=True))
        if rest:
            passes.append(_pass(cfg, plan, run_id, rest, ctx))
    else:
        passes.append(_pass(cfg, plan, run_id, todo if isinstance(todo, StreamedInputs) else input_blocks(todo, step), ctx))
    deferred = [u for _, side in passes for u in side.pop("deferred", [])]
    rows, side = merge_stats([r for r, _ in passes]), functools.reduce(merge_side, [s for _, s in passes])
    if deferred:
        import ray

        ids = pa.array(deferred, pa.string())
        copies = cut_blocks(todo.pieces, step, ray.put(ids)) if isinstance(todo, ListedInputs) else \
            input_blocks(todo.filter(pc.is_in(todo.column("utt_id"), value_set=ids)), step)
        own = CacheSource("transcripts", S.staging_dir(cfg.output, run_id), ((cfg.asr.config_hash(), cfg.segmented_hash()),))
        ctx.transcript_cache, _ = finish_cache_build(start_cache_build(own, cfg.cache.shard_mb, cfg.cache.shards))
        ctx.dedupe, ctx.second_pass = False, True
        rows2, side2 = _pass(cfg, plan, run_id, copies, ctx)
        side2.pop("deferred", None)
        rows, side = merge_stats([rows, rows2]), merge_side(side, side2)
    return rows, side, sizes


def split_cached(cfg: LabelConfig, todo: ListedInputs, ctx: StageContext, step: int) -> tuple[list[Any], list[Any]]:
    """The input blocks of a label run's two passes: (files known unchanged whose
    transcripts, under this run's settings, are in the transcript cache, in blocks of
    :data:`CACHED_ROWS_PER_BLOCK` ordered by the cache shard they are in, so a block mostly
    needs one shard (one cut task may join the ends of neighbouring shards); every other
    row, in blocks of ``step``). A Ray task per listing part splits its rows by the shard
    of their known sha256, then a task per shard looks its rows up beside the shard: the
    driver holds refs and counts, never a sha256."""
    import ray

    shards = ctx.transcript_cache
    if shards is None:
        return [], cut_blocks(todo.pieces, step)
    k = shards.k
    split = ray.remote(num_returns=k + 2, max_retries=3)(_split_known)
    pieces = [split.remote(part, k) for part, n in todo.pieces if n]
    counts = ray.get([p[k + 1] for p in pieces])
    look = ray.remote(num_returns=3, max_retries=3)(_cached_in_shard)
    rest = [(p[k], c[k]) for p, c in zip(pieces, counts)]  # rows of no known sha256
    looked = []
    for j, shard in enumerate(shards.parts):
        mine = [(p[j], c[j]) for p, c in zip(pieces, counts) if c[j]]
        if shard is None:
            rest += mine
        elif mine:
            looked.append(look.remote(shard, cfg.asr.config_hash(), cfg.segmented_hash(), cfg.segment, *(r for r, _ in mine)))
    found = ray.get([n for _, _, n in looked])
    cached = [(hit, n_hit) for (hit, _, _), (n_hit, _) in zip(looked, found)]
    rest += [(miss, n_miss) for (_, miss, _), (_, n_miss) in zip(looked, found)]
    return cut_blocks(cached, CACHED_ROWS_PER_BLOCK), cut_blocks(rest, step)


def _split_known(part: pa.Table, k: int) -> tuple[Any, ...]:
    """A listing part's rows with a known sha256 split by its shard of ``k``, the rows
    without one, and the row count of each (a map task of :func:`split_cached`)."""
    import pyarrow.compute as pc

    from labeler.cache import split_by_shard

    has = pc.is_valid(part.column("known_sha256"))
    pieces = [*split_by_shard(part.filter(has), "known_sha256", k), part.filter(pc.invert(has))]
    return (*pieces, [0 if p is None else p.num_rows for p in pieces])


def _cached_in_shard(cache: Any, whole_hash: str, segmented_hash: str, segment: Any, *pieces: Optional[pa.Table]) -> tuple[Any, Any, tuple[int, int]]:
    """The rows of one cache shard's files (``pieces``, in listing order) the shard has
    transcribed as this run would, those it has not, and their counts."""
    import pyarrow.compute as pc

    from labeler.cache import cached_mask

    have = [p for p in pieces if p is not None and p.num_rows]
    t = pa.concat_tables(have)
    hit = pa.array(cached_mask(cache, t.column("known_sha256"), whole_hash, segmented_hash, segment))
    yes, no = t.filter(hit), t.filter(pc.invert(hit))
    return yes, no, (yes.num_rows, no.num_rows)


def _pass(cfg: LabelConfig, plan: RunPlan, run_id: str, todo: Any, ctx: StageContext, blocked: bool = False) -> tuple[dict, dict]:
    """One pass of ``todo`` (:class:`StreamedInputs`, or input blocks: tables or refs to
    them, :func:`cut_blocks`) through the stages into the sink, with its own attempt id and
    collector. ``blocked``: rows that cost microseconds each (:func:`split_cached`), in blocks
    of :data:`CACHED_ROWS_PER_BLOCK` that every stage takes as one batch."""
    import ray

    from labeler.collector import start_collector
    from labeler.sink import LabelsSink
    from labeler.stages.base import chain

    attempt = secrets.token_hex(3)
    ctx.collector = start_collector(cfg.output, run_id, attempt, cfg.out.rows_per_file, cfg.out.compression)
    try:
        if isinstance(todo, StreamedInputs):
            ds = todo.dataset()
        elif todo and not isinstance(todo[0], pa.Table):
            ds = ray.data.from_arrow_refs(todo)  # blocks cut by a Ray task (cut_blocks)
        else:
            ds = ray.data.from_arrow(todo)
        sink = LabelsSink(cfg.output, run_id, attempt, cfg.out.rows_per_file, cfg.out.compression)
        try:
            chain(ds, plan.stages, cfg, ctx, blocked=blocked).write_datasink(
                sink, ray_remote_args={"num_cpus": cfg.out.write_num_cpus, "max_retries": cfg.retry.max_task_retries})
        except Exception as exc:
            cause = find_lanser_error(exc)
            if cause is not None:
                raise cause from None
            raise
        side = ray.get(ctx.collector.finish.remote())
    finally:
        ray.kill(ctx.collector)
        ctx.collector = None
    return sink.stats or {"rows": 0}, side


#: Rows per block (and per batch, in every stage) of files known unchanged whose transcripts
#: are cached (no audio is opened, no ASR runs): such a row costs microseconds, so it travels
#: in large blocks, and a night with little new is not dominated by per-batch costs (Ray
#: Data's, and each stage's report to the collector).
CACHED_ROWS_PER_BLOCK = 4096


def input_blocks(todo: pa.Table, step: int) -> list[pa.Table]:
    """``todo`` cut into Ray Data input blocks of ``step`` rows. Every row is in exactly one block."""
    return [todo.slice(i, step) for i in range(0, todo.num_rows, step)]


def merge_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two passes' collector results as one: counters added, facts and files together."""
    from collections import Counter

    stages = {k: Counter(v) for k, v in a.get("stages", {}).items()}
    for k, v in b.get("stages", {}).items():
        stages.setdefault(k, Counter()).update(v)
    facts = {k: dict(v) for k, v in a.get("facts", {}).items()}
    for k, v in b.get("facts", {}).items():
        facts.setdefault(k, {}).update(v)
    return {"stages": {k: dict(v) for k, v in stages.items()}, "facts": facts,
            "files": a.get("files", []) + b.get("files", [])}


def load_caches(cfg: LabelConfig, plan: RunPlan) -> tuple[StageContext, dict[str, int]]:
    """The caches the plan's stages look up, built by Ray tasks into the object store
    (:func:`start_cache_build`): the driver holds object refs and the cache sizes, never the
    transcripts' text or the score table, so its memory does not grow with the caches.
    Returns the stage context and the cache sizes (and shard counts)."""
    from labeler.cache import CacheSource

    ctx, sizes, building = StageContext(taxonomy=plan.taxonomy), {}, {}
    if "transcripts" in plan.caches and cfg.cache.transcripts:
        hashes = (cfg.asr.config_hash(), cfg.segmented_hash())  # files transcribed whole, segmented recordings
        building["transcripts"] = CacheSource("transcripts", cfg.output, (hashes,))
    elif "transcripts" in plan.caches:
        sizes["transcripts"] = 0
    if "scores" in plan.caches and cfg.cache.scores:
        hyps = [h for hs in plan.taxonomy.hypothesis_sets for h in hs]
        building["score_pairs"] = CacheSource("scores", cfg.output, (cfg.scorer.key_hash(), hyps))
    elif "scores" in plan.caches:
        sizes["score_pairs"] = 0
    # both caches are built at once
    started = {name: start_cache_build(src, cfg.cache.shard_mb, cfg.cache.shards) for name, src in building.items()}
    built = {name: finish_cache_build(b) for name, b in started.items()}
    for name, (shards, size) in built.items():
        sizes[name] = size
        if shards is not None and shards.k > 1:
            sizes[f"{name}_shards"] = shards.k
    ctx.transcript_cache = built.get("transcripts", (None, 0))[0]
    ctx.score_cache = built.get("score_pairs", (None, 0))[0]
    return ctx, sizes


#: The most shards a cache is cut into (``cache.shards`` and ``cache.shard_mb`` alike).
MAX_SHARDS = 4096


def start_cache_build(src: Any, shard_mb: float, shards: Optional[int] = None) -> tuple[list[Any], list[Any]]:
    """Start building the cache ``src`` (a :class:`labeler.cache.CacheSource`) with Ray tasks:
    (refs to its shards, refs to their sizes). Its table's files are listed here (no file is
    opened); ``k`` shards of about ``shard_mb`` of Parquet each (or ``shards``). One shard is
    one task that reads the table. More are a map-reduce: about ``k`` tasks each read a run of
    files and split their rows by shard, then ``k`` tasks each build one shard from its
    pieces, so no task holds more than about a shard. Each task returns its cache as one of
    two return values, so the driver owns the object (it outlives the task's worker) without
    ever deserializing it."""
    import math

    import ray

    files = src.files()
    total = sum(size for _, size in files)
    k = shards or math.ceil(total / (shard_mb * 2**20))
    k = max(1, min(MAX_SHARDS, k)) if files else 1
    if k == 1:
        cache, size = ray.remote(num_returns=2, max_retries=3)(_build_shard).remote(src)
        return [cache], [size]
    split = ray.remote(num_returns=k, max_retries=3)(_split_files)
    pieces = [split.remote(src, group, k) for group in file_groups(files, k)]
    build = ray.remote(num_returns=2, max_retries=3)(_build_shard)
    out = [build.remote(src, *(p[j] for p in pieces)) for j in range(k)]
    return [c for c, _ in out], [n for _, n in out]


def finish_cache_build(started: tuple[list[Any], list[Any]]) -> tuple[Any, int]:
    """Wait for :func:`start_cache_build`: (the cache as :class:`labeler.cache.Shards`, or None
    when it is empty; its size)."""
    import ray

    from labeler.cache import Shards

    parts, size_refs = started
    sizes = [int(n) for n in ray.get(size_refs)]
    if not sum(sizes):
        return None, 0
    return Shards([p if n else None for p, n in zip(parts, sizes)], sum(sizes)), sum(sizes)


def file_groups(files: list[tuple[str, int]], k: int) -> list[list[str]]:
    """``files`` (path, bytes) in runs of about ``1/k`` of their bytes each, in order: the
    map tasks of a sharded build (at most one per file)."""
    runs = runs_by_weight([size for _, size in files], sum(size for _, size in files) / k)
    return [[files[i][0] for i in run] for run in runs]


def _split_files(src: Any, files: list[str], k: int) -> list[Any]:
    from labeler.cache import split_by_shard

    return split_by_shard(src.read(files), src.shard_column, k)


def _build_shard(src: Any, *pieces: Any) -> tuple[Any, int]:
    """A shard of ``src`` from its pieces (the map tasks' tables); with none, the whole cache
    from the table itself."""
    if not pieces:
        cache = src.build(src.read())
    else:
        rows = [p for p in pieces if p is not None and p.num_rows]
        cache = src.build(pa.concat_tables(rows) if len(rows) > 1 else (rows[0] if rows else None))
    return (cache if len(cache) else None), len(cache)


# ----------------------------------------------------------------------------- Ray


FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


def init_ray(cfg: LabelConfig) -> None:
    """Connect to ``ray.address`` / ``RAY_ADDRESS``, else start a local Ray. Sets Ray Data's
    context once, here in the entry point."""
    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        env = forwarded_runtime_env()
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=env)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = False


def forwarded_runtime_env() -> Optional[dict[str, Any]]:
    """The driver's model-hub settings, passed on to every worker on every node. Inside a
    Ray Job (``ray job submit``) the variables its runtime env already sets are left out:
    Ray refuses to start a driver whose ``ray.init`` names an env var the Job also names."""
    keys = [k for k in FORWARDED_ENV if k in os.environ]
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        taken = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        keys = [k for k in keys if k not in taken]
    return {"env_vars": {k: os.environ[k] for k in keys}} if keys else None


# ----------------------------------------------------------------------------- claim and resume


def new_run_id() -> str:
    """Time-sortable and unique: ``20261124T231900Z-3f9a1c2e``."""
    return now_utc().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def claim_run(root: str, key: str, kind: str, requested: Optional[str] = None) -> tuple[str, RunLock]:
    """Pick the run id for this command and lock it.

    - ``requested`` given: that id (resumed if staged); fails if another process holds it.
    - else: the newest unfinished run with the same key whose lock is free, or a new id.
    """
    if requested:
        lock = RunLock(root, requested)
        if not lock.acquire():
            raise LanserError(f"run {requested} is in progress in another process (lock {lock.path}); wait for it or choose another --run-id")
        if not any(r["run_id"] == requested for r in staged_runs(root)):
            write_run_info(root, requested, key, kind)
        return requested, lock
    for info in reversed(staged_runs(root)):
        if info.get("key") != key or read_manifest(root, info["run_id"]) is not None:
            continue
        lock = RunLock(root, info["run_id"])
        if lock.acquire():
            return info["run_id"], lock
    run_id = new_run_id()
    lock = RunLock(root, run_id)
    if not lock.acquire():  # pragma: no cover - a fresh random id
        raise LanserError(f"cannot lock new run {run_id}")
    write_run_info(root, run_id, key, kind)
    return run_id, lock


def write_run_info(root: str, run_id: str, key: str, kind: str) -> None:
    fs, path = filesystem(join(S.staging_dir(root, run_id), "run.json"))
    info = {"run_id": run_id, "key": key, "kind": kind, "started_at": now_utc().isoformat()}
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(info).encode())


def staged_runs(root: str) -> list[dict[str, Any]]:
    """run.json of every unfinished run under ``_staging/``, oldest first."""
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, "_staging"))
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, "run.json")) as f:
                out.append(json.loads(f.read().decode()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r.get("run_id", ""))


def staged_parts(root: str, run_id: str) -> tuple[Any, list[str]]:
    """(filesystem, paths) of every complete labels part staged for ``run_id``, all
    attempts; ``.tmp`` files are not parts."""
    import pyarrow.fs as pafs

    fs, stage = filesystem(S.staging_dir(root, run_id))
    infos = fs.get_file_info(pafs.FileSelector(posixpath.join(stage, "labels"), allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def staged_ids(fs, paths: list[str]) -> pa.Table:
    """``utt_id`` and ``source_id`` of every staged labels row, with the part it is in."""
    import pyarrow.parquet as pq

    tables = []
    for k, path in enumerate(paths):
        t = pq.read_table(path, filesystem=fs, columns=["utt_id", "source_id"])
        tables.append(t.append_column("part", pa.array([k] * t.num_rows, pa.int32())))
    if not tables:
        return pa.table({"utt_id": pa.array([], pa.string()), "source_id": pa.array([], pa.string()), "part": pa.array([], pa.int32())})
    return pa.concat_tables(tables)


def unit_counts(ids: pa.Table, unit: str, segmented: dict[str, int]) -> tuple[set[str], set[str]]:
    """(complete, incomplete) units among the staged rows: a unit (a file for a label run, an
    utterance for a relabel) is complete when it has as many rows as it gives in all (its
    utterances, from the parts' ``segmented`` summaries; one row otherwise)."""
    import pyarrow.compute as pc

    if ids.num_rows == 0:
        return set(), set()
    vc = pc.value_counts(ids.column(unit).combine_chunks())
    complete, incomplete = set(), set()
    for value, count in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
        want = segmented.get(value, 1) if unit == "source_id" else 1
        (complete if count == want else incomplete).add(value)
    return complete, incomplete


def settle_staged(root: str, run_id: str, unit: str, compression: str = "zstd") -> set[str]:
    """The units a killed attempt staged completely. A file whose utterances were cut short
    (some parts written, others not) has its staged rows removed, so the resumed run writes
    it again whole: each part holding such rows is rewritten without them (atomically, under
    its own name, its footer summary recomputed)."""
    import pyarrow.parquet as pq

    from labeler.sink import read_part_summaries, summarize_rows, write_part

    fs, paths = staged_parts(root, run_id)
    if not paths:
        return set()
    summaries = read_part_summaries(fs, paths)
    segmented = {k: v for p in summaries for k, v in p.get("segmented", {}).items()}
    ids = staged_ids(fs, paths)
    complete, incomplete = unit_counts(ids, unit, segmented)
    if incomplete:
        import pyarrow.compute as pc

        bad = pa.array(sorted(incomplete), pa.string())
        hit = ids.filter(pc.is_in(ids.column(unit), value_set=bad)).column("part").unique().to_pylist()
        for k in hit:
            table = pq.read_table(paths[k], filesystem=fs)
            keep = table.filter(pc.invert(pc.is_in(table.column(unit), value_set=bad)))
            if keep.num_rows == 0:
                fs.delete_file(paths[k])
                continue
            still = {s: n for s, n in summaries[k].get("segmented", {}).items() if s not in incomplete}
            write_part(posixpath.dirname(paths[k]), posixpath.basename(paths[k]), keep.replace_schema_metadata(None),
                       summarize_rows(keep, still), compression)
    return complete


def remaining(inputs: Any, root: str, run_id: str, unit: str = "source_id", compression: str = "zstd") -> tuple[Any, int]:
    """Input rows (keyed by ``utt_id``: a file's id for a label run, an utterance's for a
    relabel) not yet completely in the staged parts of ``run_id`` (a resumed run skips them).
    Returns them and how many were skipped."""
    done = settle_staged(root, run_id, unit, compression)
    if not done:
        return inputs, 0
    if isinstance(inputs, StreamedInputs):  # every staged unit is one of this run's inputs (same run key)
        skip = pa.array(sorted(done), pa.string())
        return replace(inputs, num_rows=inputs.num_rows - len(done), skip=skip), len(done)
    if isinstance(inputs, Listing):  # each part numbered and filtered where it is, by a Ray task
        import ray

        ids = ray.put(pa.array(sorted(done), pa.string()))
        task = ray.remote(num_returns=2, max_retries=3)(_drop_done)
        out = [task.remote(part, offset, rows, ids) for part, offset, rows in zip(inputs.parts, inputs.offsets, inputs.rows)]
        todo = Listing([p for p, _ in out], ray.get([n for _, n in out]), inputs.bounds)
        return todo, inputs.num_rows - todo.num_rows
    todo = drop_ids(inputs, pa.array(sorted(done), pa.string()))
    return todo, inputs.num_rows - todo.num_rows


def _drop_done(part: pa.Table, offset: int, rows: int, ids: pa.Array) -> tuple[pa.Table, int]:
    from labeler.sources import number

    same_part(part, rows)
    t = drop_ids(number(part, offset), ids)
    return t, t.num_rows


# ----------------------------------------------------------------------------- manifest and commit


def build_manifest(cfg: LabelConfig, plan: RunPlan, run_id: str, input_rows: int, resumed_rows: int, rows: dict[str, Any],
                   side: dict[str, Any], sizes: dict[str, int], wall: float, started: float) -> dict[str, Any]:
    """The manifest of this attempt, before the commit adds the run's totals."""
    stages = side.get("stages", {})
    cache: dict[str, int] = dict(plan.preset_cache_counts(rows.get("rows", 0)))
    for counters in stages.values():
        for k in ("transcripts_from_cache", "transcribed", "transcripts_from_this_run", "n_pairs_cached", "n_pairs_memo",
                  "n_pairs_scored"):
            if k in counters:
                cache[k] = cache.get(k, 0) + int(counters[k])
    audio = rows.get("audio_seconds", 0.0)
    manifest = {
        "run_id": run_id,
        "kind": plan.kind,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "wall_seconds": round(wall, 3),
        "input": redact(cfg.input) if cfg.input else None,
        "output": redact(cfg.output),
        "taxonomy": plan.taxonomy.to_dict(),
        "models": {"asr": cfg.asr.model, "asr_config_hash": cfg.asr.config_hash(), "segmented_asr_config_hash": cfg.segmented_hash(),
                   "scorer": f"{cfg.scorer.backend}:{cfg.scorer.model}", "scorer_key": cfg.scorer.key_hash()},
        "config": redact_config(cfg),
        "counts": {"input_rows": input_rows, "resumed_rows": resumed_rows, "processed_rows": rows.get("rows", 0)},
        "cache": dict(sorted(cache.items())),
        "cache_sizes": sizes,
        "audio_files_read": int(stages.get("decode", {}).get("audio_files_read", 0)),
        "throughput_audio_s_per_s": round(audio / wall, 3) if wall > 0 and audio else None,
        "stage_busy_seconds": {k: round(v.get("busy_seconds", 0.0), 3) for k, v in stages.items()},
        "stage_counters": {k: {c: round(x, 3) if isinstance(x, float) else x for c, x in v.items()} for k, v in stages.items()},
        "stage_facts": side.get("facts", {}),
        "files": [{"table": t, "file": f, "rows": r} for t, f, r in rows.get("files", []) + side.get("files", [])],
        "errors_sample": rows.get("errors_sample", []),
    }
    for k, v in plan.manifest.items():  # a relabel's source run and models
        manifest[k] = {**manifest[k], **v} if isinstance(v, dict) and isinstance(manifest.get(k), dict) else v
    return manifest


def count_staged(root: str, run_id: str, unit: str, segmented: dict[str, int]) -> tuple[int, int, int, int]:
    """(units staged completely, units cut short, rows, distinct utt_id) over every staged part of ``run_id``."""
    import pyarrow.compute as pc

    fs, paths = staged_parts(root, run_id)
    ids = staged_ids(fs, paths)
    complete, incomplete = unit_counts(ids, unit, segmented)
    unique = pc.count_distinct(ids.column("utt_id")).as_py() if ids.num_rows else 0
    return len(complete), len(incomplete), ids.num_rows, unique


def on_ray(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` as a Ray task when Ray is up (its memory is a worker's, not the
    driver's), else here."""
    import ray

    if not ray.is_initialized():
        return fn(*args)
    return ray.get(ray.remote(max_retries=3)(fn).remote(*args))


def commit(root: str, run_id: str, taxonomy: Taxonomy, scorer_key: str, expected_rows: int, manifest: dict[str, Any],
           unit: str = "source_id") -> dict[str, Any]:
    """Publish a staged run: check every input (``unit``) is there exactly once and whole
    (all of a file's utterances) and every utt_id once, move the partitions into
    place, write the manifest last. The run's totals come from the row summaries in the
    footers of its staged parts (every attempt's), not from reading the rows again; the
    ids are checked by a Ray task, so the driver never holds them."""
    from labeler.sink import merge_stats, read_part_summaries

    fs, paths = staged_parts(root, run_id)
    totals = merge_stats(read_part_summaries(fs, paths))
    complete, incomplete, rows, unique = on_ray(count_staged, root, run_id, unit, totals["segmented"])
    if complete != expected_rows or incomplete or unique != rows:
        what = "files" if unit == "source_id" else "utterances"
        raise CommitError(
            f"run {run_id}: {expected_rows} input {what} but {complete} staged completely"
            f"{f' and {incomplete} cut short' if incomplete else ''} ({rows} rows, {unique} distinct utt_id); "
            f"nothing was published (staged files are under {redact(S.staging_dir(root, run_id))})"
        )
    _, stage = filesystem(S.staging_dir(root, run_id))
    tables = {
        "labels": S.labels_partition(root, taxonomy.name, taxonomy.version, run_id),
        "transcripts": S.transcripts_partition(root, run_id),
        "scores": S.scores_partition(root, scorer_key, run_id),
        "sources": S.sources_partition(root, run_id),
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
        "output_rows": totals["rows"],
        "sources": totals["sources"],
        "utterances": totals["utterances"],
        "segmented_sources": len(totals["segmented"]),
        "status": totals["status"],
        "labels": totals["labels"],
        "abstain_reasons": totals["abstain_reasons"],
        "error_stages": totals["error_stages"],
    }
    manifest["confidence_histogram"] = {"bins": [i / 10 for i in range(11)], "counts": totals["confidence_hist"]}
    manifest["audio_seconds"] = round(totals["audio_seconds"], 3)
    manifest["utterance_seconds"] = round(totals["utterance_seconds"], 3)
    from labeler.sink import LENGTH_BINS

    manifest["utterance_length_histogram"] = {"bins_s": [0, *LENGTH_BINS, None], "counts": totals["utterance_length_hist"]}
    manifest.update(status="committed", committed_at=now_utc().isoformat(), tables=published)
    write_json_atomic(S.manifest_path(root, run_id), manifest)
    return manifest


def _has_files(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return any(i.type == pafs.FileType.File for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


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


def redact_config(cfg: LabelConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["input"] = redact(data["input"]) if data.get("input") else None
    data["output"] = redact(data["output"]) if data.get("output") else None
    if data.get("ray", {}).get("address"):
        data["ray"]["address"] = redact(data["ray"]["address"])
    return data


def write_report_or_warn(root: str, manifest: dict[str, Any]) -> None:
    """The run report (``reports/<run_id>.json`` and ``.png``) of a committed run. Best
    effort on purpose: the run is already committed, so a report that cannot be written
    (no matplotlib, a full disk) is a warning, never a failed run."""
    import logging

    from labeler.io import redact_text
    from labeler.report import write_report

    try:
        write_report(root, manifest)
    except Exception as exc:
        logging.getLogger("labeler").warning(
            "run %s is committed but its report could not be written: %s", manifest["run_id"],
            redact_text(f"{type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------------- committed runs


def manifest_run_ids(root: str) -> list[str]:
    """Ids of the runs with a manifest under ``<root>/runs/``, oldest first (ids sort by
    time); ``.tmp`` files are not manifests."""
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, "runs"))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name[:-5] for i in infos if i.base_name.endswith(".json"))


def read_manifest(root: str, run_id: str) -> Optional[dict[str, Any]]:
    import pyarrow.fs as pafs

    fs, path = filesystem(S.manifest_path(root, run_id))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def _committed(manifest: Optional[dict[str, Any]], kinds: tuple[str, ...]) -> bool:
    """A run is committed when its manifest says ``status: committed`` (written last, after
    its partitions moved)."""
    return bool(manifest) and manifest.get("status") == "committed" and manifest.get("kind") in kinds


def committed_runs(root: str, kinds: tuple[str, ...] = ("label", "relabel")) -> list[dict[str, Any]]:
    """Manifests of the committed runs under ``root``, oldest first."""
    found = (read_manifest(root, name) for name in manifest_run_ids(root))
    return [m for m in found if _committed(m, kinds)]


def latest_run(root: str, kinds: tuple[str, ...] = ("label", "relabel")) -> Optional[dict[str, Any]]:
    """Manifest of the newest committed run under ``root`` (run ids sort by time); reads
    manifests from the newest back, stopping at the first committed one."""
    found = (read_manifest(root, name) for name in reversed(manifest_run_ids(root)))
    return next((m for m in found if _committed(m, kinds)), None)


def find_committed(root: str, run_id: Optional[str] = None) -> dict[str, Any]:
    """The committed run ``run_id`` (default: the newest), or an :class:`InputError` that says
    what is there."""
    m = read_manifest(root, run_id) if run_id else latest_run(root)
    if m is None or m.get("status") != "committed":
        raise InputError(f"no committed run {'named ' + run_id + ' ' if run_id else ''}under {redact(root)}")
    return m


def labels_uri(root: str, manifest: dict[str, Any]) -> str:
    """Where a committed run's labels partition is, found from ``root`` as given
    (credentials included; the manifest's own table paths are redacted)."""
    tax = manifest["taxonomy"]
    return S.labels_partition(root, tax["name"], tax["version"], manifest["run_id"])


#: Columns every labels row has, whatever the run's age (the span of older runs is derived from them).
SPAN_INPUTS = ("utt_id", "source_id", "segment_index", "start_s", "end_s", "duration_s", "error")


def as_utterances(t: pa.Table) -> pa.Table:
    """Rows of a run written before the utterance columns existed, read as one utterance per
    file: their ``source_id`` is the ``utt_id``, the span the whole file (null on an error
    row). Rows of newer runs are returned as they are."""
    import pyarrow.compute as pc

    if t.num_rows and t.column("source_id").null_count == t.num_rows:  # an older run
        ok = pc.is_null(t.column("error"))
        t = t.set_column(t.column_names.index("source_id"), "source_id", t.column("utt_id"))
        t = t.set_column(t.column_names.index("segment_index"), "segment_index", pc.if_else(ok, pa.scalar(0, pa.int32()), pa.scalar(None, pa.int32())))
        t = t.set_column(t.column_names.index("start_s"), "start_s", pc.if_else(ok, 0.0, pa.scalar(None, pa.float64())))
        t = t.set_column(t.column_names.index("end_s"), "end_s", pc.if_else(ok, t.column("duration_s"), pa.scalar(None, pa.float64())))
    return t


def read_run_rows(root: str, manifest: dict[str, Any], columns: list[str]) -> pa.Table:
    """The given columns of a committed run's labels partition, sorted by ``utt_id``, read
    here (for tools that look at a run: inspect, evaluate, tune). A relabel streams them
    instead (:func:`stream_run_rows`)."""
    import pyarrow.dataset as pads

    fs, path = filesystem(labels_uri(root, manifest))
    t = pads.dataset(path, filesystem=fs, format="parquet", schema=S.LABELS_FILE_SCHEMA).to_table(
        columns=sorted(set(columns) | set(SPAN_INPUTS)))
    return as_utterances(t).select(columns).sort_by("utt_id")


def _select_utterances(batch: pa.Table, columns: list[str]) -> pa.Table:
    # columns an older run's files lack are null, as when the driver reads them with the schema
    for f in S.LABELS_FILE_SCHEMA:
        if f.name not in batch.column_names and (f.name in columns or f.name in SPAN_INPUTS):
            batch = batch.append_column(f, pa.nulls(batch.num_rows, f.type))
    return as_utterances(batch).select(columns)


def stream_run_rows(root: str, manifest: dict[str, Any], columns: list[str], rows_per_block: int) -> StreamedInputs:
    """A committed run's labels rows as :class:`StreamedInputs`: read by ``ray.data.read_parquet``
    in the workers, a block at a time. The driver reads only the Parquet footers (row count, schema)."""
    import pyarrow.dataset as pads

    fs, path = filesystem(labels_uri(root, manifest))
    d = pads.dataset(path, filesystem=fs, format="parquet")
    n = d.count_rows()
    read = [c for c in sorted(set(columns) | set(SPAN_INPUTS)) if c in d.schema.names]  # an older run lacks some

    def make() -> Any:
        import ray

        ds = ray.data.read_parquet(path, filesystem=fs).select_columns(read)  # pushed down into the read
        return ds.map_batches(_select_utterances, batch_format="pyarrow", batch_size=rows_per_block,
                              fn_kwargs={"columns": list(columns)}, zero_copy_batch=True)

    return StreamedInputs(make=make, num_rows=n, column_names=list(columns))
