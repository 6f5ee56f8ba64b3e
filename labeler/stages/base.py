"""The one shape every stage has, and the checks that hold it to its word.

A stage is a callable class for ``Dataset.map_batches``, built once per worker as
``Stage(cfg, ctx)`` from the run's :class:`~labeler.config.LabelConfig` (it reads its own
section) and a :class:`StageContext` (taxonomy, caches, the run's collector). It declares
the columns it ``reads`` and ``writes`` (types from :mod:`labeler.schema`); its
:meth:`Stage.process` sees only the columns it reads and returns only those it writes.
:meth:`Stage.__call__` does the rest: checks the input, carries every other column
through, checks the row accounting, and reports the stage's counters and busy time to the
collector, never into the rows.

Row accounting: a stage is 1:1 (one output row per input row, in order), or, with
``expands = True``, 1 -> N: its output names each row's input row in ``parent_row``, and
every input row must appear at least once (a source that yields no utterance still leaves
one row, carrying its reason).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Optional

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.collector import Reporter
from labeler.config import LabelConfig
from labeler.taxonomy import Taxonomy


class StageContractError(RuntimeError):
    """A stage broke its contract (a bug, not bad input): the job stops."""


@dataclass
class StageContext:
    """What a stage needs besides the config. A cache is a :class:`labeler.cache.Shards` of
    Ray object refs (or one cache, in tests): a worker fetches the shards its rows need."""

    taxonomy: Optional[Taxonomy] = None
    transcript_cache: Any = None  # labeler.cache.Shards of TranscriptCache, or one TranscriptCache
    score_cache: Any = None  # labeler.cache.Shards of ScoreCache, or one ScoreCache
    collector: Any = None  # labeler.collector.Collector, or a Ray actor handle of one
    dedupe: bool = False  # decode holds back a copy of audio another input of the run transcribes
    second_pass: bool = False  # the run's pass over those copies (transcript_cache: this run's own)


class Stage:
    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    writes: ClassVar[tuple[str, ...]]
    optional_reads: ClassVar[tuple[str, ...]] = ()  # columns the stage also reads when the batch has them
    drops: ClassVar[tuple[str, ...]] = ()  # columns removed after this stage
    expands: ClassVar[bool] = False  # may emit several rows per input row (``parent_row``)

    def __init__(self, cfg: LabelConfig, ctx: StageContext) -> None:
        self.cfg = cfg
        self.report = Reporter(ctx.collector)
        self._counters: Counter = Counter()
        self._entries: dict[str, list[pa.Table]] = {}
        self._facts: dict[str, Any] = {}

    @classmethod
    def resources(cls, cfg: LabelConfig) -> dict[str, Any]:
        """``num_cpus``, ``num_gpus``, ``concurrency``, ``batch_size`` (and optionally
        ``runtime_env``) of this stage's actor pool, from the config."""
        raise NotImplementedError

    def process(self, batch: pa.Table) -> pa.Table:
        """The work: ``batch`` holds the ``reads`` columns; return the ``writes`` columns
        (plus ``parent_row`` when the stage expands)."""
        raise NotImplementedError

    def count(self, **counters: float) -> None:
        """Add to this batch's counters (they reach the run manifest, not the rows)."""
        self._counters.update(counters)

    def note(self, **facts: Any) -> None:
        """Record facts of this stage's work for the run manifest (``stage_facts``), such as
        the dtype its model settled on and why; JSON-serializable values, the latest wins."""
        self._facts.update(facts)

    def emit(self, table: str, rows: pa.Table) -> None:
        """Hand entries for a cache table (``transcripts``, ``scores``) to the collector."""
        self._entries.setdefault(table, []).append(rows)

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in self.reads if c not in batch.column_names]
        if missing:
            raise StageContractError(f"{self.name}: input batch lacks columns {missing} (has {batch.column_names})")
        t0 = time.perf_counter()
        written = self.process(batch.select([*self.reads, *(c for c in self.optional_reads if c in batch.column_names)]))
        busy = time.perf_counter() - t0
        out = self._merge(batch, written)
        entries = {k: pa.concat_tables(v, promote_options="default") for k, v in self._entries.items()}
        counters = {"busy_seconds": busy, "rows_in": batch.num_rows, "rows_out": out.num_rows, **self._counters}
        facts, self._counters, self._entries, self._facts = self._facts, Counter(), {}, {}
        self.report(self.name, counters, entries, facts)
        return out

    def _merge(self, batch: pa.Table, written: pa.Table) -> pa.Table:
        expected = set(self.writes) | ({"parent_row"} if self.expands else set())
        if set(written.column_names) != expected:
            raise StageContractError(f"{self.name}: wrote columns {sorted(written.column_names)}, declared {sorted(expected)}")
        n = batch.num_rows
        if self.expands:
            parents = written.column("parent_row").to_numpy()
            if len(parents) and (np.any(np.diff(parents) < 0) or parents[0] < 0 or parents[-1] >= n):
                raise StageContractError(f"{self.name}: parent_row must be ordered indices into the input batch")
            if len(np.unique(parents)) != n:
                lost = sorted(set(range(n)) - set(parents.tolist()))
                raise StageContractError(f"{self.name}: input rows {lost[:10]} left no output row; every input must be accounted for")
            batch = batch.take(pa.array(parents))
        elif written.num_rows != n:
            raise StageContractError(f"{self.name}: {n} rows came in but {written.num_rows} left; every row must leave exactly once")
        out = batch.drop_columns([c for c in self.drops if c in batch.column_names])
        return with_columns(out, {c: cast(self.name, c, written.column(c)) for c in self.writes})


def cast(stage: str, name: str, values) -> pa.ChunkedArray:
    try:
        return values.cast(S.column_type(name))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StageContractError(f"{stage}: column {name} cannot be {S.column_type(name)}: {exc}") from exc


def columns(values: dict[str, Iterable]) -> pa.Table:
    """A table of pipeline columns from Python lists, typed by :func:`labeler.schema.column_type`."""
    return pa.table({k: pa.array(list(v), S.column_type(k)) for k, v in values.items()})


def with_columns(table: pa.Table, new: dict[str, Any]) -> pa.Table:
    """Append or replace columns (order: existing first, new ones after)."""
    for name, arr in new.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def stage_error(stage: str, exc: BaseException) -> str:
    """The ``error`` value for a row a stage could not process."""
    from labeler.io import redact_text

    msg = str(exc).strip() or type(exc).__name__
    return redact_text(f"{stage}: {msg}")


def actor_pool(concurrency, retry) -> dict[str, Any]:
    """Ray Data actor-pool arguments. On purpose: an actor whose process dies is restarted
    and its calls retried; an exception raised by our code is not retried (per-row problems
    are already data)."""
    import ray

    if isinstance(concurrency, tuple):
        pool = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ray.data.ActorPoolStrategy(size=concurrency)
    return {"compute": pool, "max_restarts": retry.max_actor_restarts, "max_task_retries": retry.max_task_retries}


def chain(ds: "ray.data.Dataset", stages: Iterable[type[Stage]], cfg: LabelConfig, ctx: StageContext,
          blocked: bool = False) -> "ray.data.Dataset":
    """``ds`` through each stage's actor pool, in order (lazy: nothing runs yet). ``blocked``:
    every stage takes each block whole as one batch, whatever its ``batch_size`` (for rows
    that cost microseconds each, :func:`labeler.runs.split_cached`: one call per stage and
    block, not one per ``batch_size`` rows)."""
    for stage in stages:
        res = dict(stage.resources(cfg))
        args = actor_pool(res.pop("concurrency"), cfg.retry)
        if not res.get("num_gpus"):
            res.pop("num_gpus", None)
        batch_size = res.pop("batch_size")
        ds = ds.map_batches(stage, fn_constructor_args=(cfg, ctx), batch_format="pyarrow",
                            batch_size=None if blocked else batch_size, **res, **args)
    return ds


def require_stages(stages: Iterable[type[Stage]], available: Iterable[str]) -> None:
    """Check, before anything runs, that each stage finds the columns it reads."""
    have = set(available)
    for stage in stages:
        missing = [c for c in stage.reads if c not in have]
        if missing:
            raise StageContractError(f"{stage.name}: reads {missing}, which no input or earlier stage provides")
        have |= set(stage.writes)
        have -= set(stage.drops)
