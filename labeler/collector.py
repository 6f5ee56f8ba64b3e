"""The run's side channel: what the stages learn and what they add to the caches.

Data rows carry data only. A stage's counters and busy time (rows, cache hits, pairs
scored, windows packed), the facts it settled on (say, the dtype a model runs in) and its
cache entries (new transcripts, new pair scores) leave through a :class:`Collector` instead: one per run attempt, a Ray actor that takes no CPU,
called by every stage after every batch. It sums the counters, which the run manifest is
built from, and writes the cache entries as Parquet parts into the run's staging folder,
where the commit publishes them with the run's labels (or drops them with a failed run).

A stage waits for its report to be taken (one small round trip per batch), so when the
dataset has finished, every report has reached the collector. A batch that Ray retries
after a lost worker reports again: counters count attempts, and a cache entry written
twice is harmless (cache readers keep one entry per key).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import pyarrow as pa

from labeler import schema as S
from labeler.io import join, redact_uri_column, write_parquet_atomic

#: Cache tables a stage may add entries to, with the schema their parts are written in.
CACHE_TABLES = {"transcripts": S.TRANSCRIPTS_FILE_SCHEMA, "scores": S.SCORES_FILE_SCHEMA, "sources": S.SOURCES_FILE_SCHEMA}


class Collector:
    """Counters per stage, and cache entries buffered and written as staged parts."""

    def __init__(self, root: str, run_id: str, attempt: str, rows_per_file: int, compression: str = "zstd") -> None:
        self.root, self.run_id, self.attempt = root, run_id, attempt
        self.rows_per_file = rows_per_file
        self.compression = compression
        self.stages: dict[str, Counter] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self.buffers: dict[str, list[pa.Table]] = {name: [] for name in CACHE_TABLES}
        self.files: list[tuple[str, str, int]] = []
        self.owners: dict[str, str] = {}  # audio sha256 -> the input that transcribes it in this pass
        self.deferred: set[str] = set()  # inputs whose audio another input transcribes

    def claim(self, sha: str, source: str) -> bool:
        """Whether ``source`` transcribes audio ``sha`` in this pass: the first input with
        that audio does (and keeps doing, if its batch is retried); a later copy is held
        back for the run's second pass, which finds the first's transcript."""
        owner = self.owners.setdefault(sha, source)
        if owner != source:
            self.deferred.add(source)
        return owner == source

    def add(self, stage: str, counters: dict[str, float], entries: Optional[dict[str, pa.Table]] = None,
            facts: Optional[dict[str, Any]] = None) -> None:
        self.stages.setdefault(stage, Counter()).update(counters)
        self.facts.setdefault(stage, {}).update(facts or {})
        for table, rows in (entries or {}).items():
            if table not in CACHE_TABLES:
                raise ValueError(f"{stage}: unknown cache table {table!r} (known: {sorted(CACHE_TABLES)})")
            if rows.num_rows:
                self.buffers[table].append(rows)
                if sum(t.num_rows for t in self.buffers[table]) >= self.rows_per_file:
                    self._write(table)

    def _write(self, table: str) -> None:
        parts, self.buffers[table] = self.buffers[table], []
        if not parts:
            return
        rows = S.conform(redact_uri_column(pa.concat_tables(parts, promote_options="default")), CACHE_TABLES[table])
        name = f"part-{self.attempt}-c{len(self.files):05d}.parquet"
        write_parquet_atomic(join(S.staging_dir(self.root, self.run_id), table), name, rows, self.compression)
        self.files.append((table, name, rows.num_rows))

    def finish(self) -> dict[str, Any]:
        """Write what is buffered; the counters per stage and the files written."""
        for table in CACHE_TABLES:
            self._write(table)
        return {"stages": {k: dict(v) for k, v in sorted(self.stages.items())},
                "facts": {k: v for k, v in sorted(self.facts.items()) if v}, "files": list(self.files),
                "deferred": sorted(self.deferred)}


class Reporter:
    """What a stage holds: sends its counters and entries to the run's collector (a Ray actor
    handle, or a :class:`Collector` in the same process), or nowhere."""

    def __init__(self, target: Any = None) -> None:
        self.target = target

    def __call__(self, stage: str, counters: dict[str, float], entries: Optional[dict[str, pa.Table]] = None,
                 facts: Optional[dict[str, Any]] = None) -> None:
        if self.target is None:
            return
        if isinstance(self.target, Collector):
            self.target.add(stage, counters, entries, facts)
            return
        import ray

        ray.get(self.target.add.remote(stage, counters, entries, facts))

    def claim(self, sha: str, source: str) -> bool:
        """:meth:`Collector.claim` (True without a collector)."""
        if self.target is None:
            return True
        if isinstance(self.target, Collector):
            return self.target.claim(sha, source)
        import ray

        return ray.get(self.target.claim.remote(sha, source))


def start_collector(root: str, run_id: str, attempt: str, rows_per_file: int, compression: str):
    """The collector of one run attempt, as a Ray actor on the driver's node that takes no CPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(num_cpus=0, max_restarts=0)(Collector)
    return actor.options(scheduling_strategy=here).remote(root, run_id, attempt, rows_per_file, compression)
