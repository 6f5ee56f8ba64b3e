"""Transcript and score caches, read from an output root's own tables.

- **Transcripts** (``transcripts/``): keyed by audio sha256 x ASR config hash. A labeling
  run sends through ASR only audio not yet transcribed with the same settings.
- **Scores** (``scores/``): keyed by (scorer key, transcript text, hypothesis text). A new
  taxonomy that shares labels with an old one scores only the new pairs.

Each is built once per run by Ray tasks (:func:`labeler.runs.load_caches`; the driver holds
only object refs) into sorted ``uint64`` key arrays (binary search, 12-20 bytes per entry)
kept in Ray's object store. A large cache is built and looked up in **shards** by the sha256
its rows are keyed by (the audio's, the transcript text's; :func:`shard_of`): map tasks
split the table's files by shard, one task per shard builds it, and a stage fetches only
the shards its rows fall in (:class:`Shards`), so no task reads, and no worker maps, the
whole cache. Lookups take a block of keys at once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler import schema as S
from labeler.io import filesystem, join

#: What a cache hit gives each utterance of a file: the file's identity and duration, the
#: utterance's place in it, and its transcript.
TRANSCRIPT_COLUMNS = ("audio_sha256", "duration_s", "segment_index", "segment_count", "start_s", "end_s", *S.TRANSCRIPT_COLUMNS)


def key64(*parts: str) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little")


def pair_key(scorer_key: str, text: str, hypothesis: str) -> int:
    """The score cache's key of a (transcript, hypothesis) pair under a scorer."""
    return key64(scorer_key, text, hypothesis)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index into ``keys`` (sorted) of each wanted key, or -1."""
    if len(keys) == 0 or len(wanted) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    pos = np.searchsorted(keys, wanted)
    pos = np.minimum(pos, len(keys) - 1)
    return np.where(keys[pos] == wanted, pos, -1)


def _read_table(root: str, sub: str, columns: list[str], filter_expr, schema: Optional[pa.Schema] = None,
                files: Optional[Sequence[str]] = None) -> Optional[pa.Table]:
    """Rows of one of the root's tables (only the given ``files`` of it, when given); with
    ``schema``, files written before a column was added read it as null."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, sub))
    if files is not None:
        if not files:
            return None
        ds = pads.dataset(list(files), filesystem=fs, format="parquet", partitioning="hive", partition_base_dir=path,
                          exclude_invalid_files=False, schema=schema)
        return ds.to_table(columns=columns, filter=filter_expr)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    ds = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive", exclude_invalid_files=False, schema=schema)
    if not ds.files:
        return None
    return ds.to_table(columns=columns, filter=filter_expr)


def table_files(root: str, sub: str) -> list[tuple[str, int]]:
    """(path, bytes) of every Parquet file of one of the root's tables, in path order (a
    listing: no file is opened). ``.tmp`` files being written are not part of it."""
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, sub))
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((i.path, int(i.size or 0)) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


_HEX = np.zeros(256, np.uint64)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint64)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_DIGITS = 15  # 60 bits of the digest


def shard_of(digests: Any, k: int) -> np.ndarray:
    """The shard (``0..k-1``, ``k`` at most 32,767) of each sha256 hex digest (a list, or an
    Arrow array; null and non-hex characters count as ``0``): its first 15 hex digits modulo ``k``. As uniform as
    sha256 is, and the same in the tasks that build a cache and the stages that look it up."""
    n = len(digests)
    if k <= 1 or n == 0:
        return np.zeros(n, np.int16)
    raw = None
    if isinstance(digests, (pa.Array, pa.ChunkedArray)):
        head = pc.utf8_rpad(pc.utf8_slice_codeunits(digests.fill_null(""), 0, _DIGITS), _DIGITS, "0")
        head = head.combine_chunks() if isinstance(head, pa.ChunkedArray) else head
        offsets = np.frombuffer(head.buffers()[1], np.int32)[head.offset:head.offset + n + 1]
        if np.all(np.diff(offsets) == _DIGITS):  # ASCII, as hex digests are: fixed width
            raw = np.frombuffer(head.buffers()[2], np.uint8)[offsets[0]:offsets[0] + _DIGITS * n].reshape(n, _DIGITS)
        else:
            digests = digests.to_pylist()
    if raw is None:
        raw = np.frombuffer(b"".join((d or "").encode("utf-8")[:_DIGITS].ljust(_DIGITS, b"0") for d in digests),
                            np.uint8).reshape(n, _DIGITS)
    shifts = np.uint64(4) * np.arange(_DIGITS - 1, -1, -1, dtype=np.uint64)
    out = np.empty(n, np.int16)  # k <= MAX_SHARDS; computed a slice at a time, so a listing's worth costs 2 B a row
    for i in range(0, n, 1 << 16):
        value = (_HEX[raw[i:i + (1 << 16)]] << shifts).sum(axis=1, dtype=np.uint64)
        out[i:i + len(value)] = value % np.uint64(k)
    return out


def split_by_shard(t: Optional[pa.Table], column: str, k: int) -> list[Optional[pa.Table]]:
    """``t``'s rows in ``k`` tables by :func:`shard_of` their ``column`` (None where a shard
    gets no row): the map side of a sharded cache build."""
    if t is None or t.num_rows == 0:
        return [None] * k
    shard = shard_of(t.column(column), k)
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(k + 1))
    t = t.take(pa.array(order, pa.int64()))
    return [t.slice(bounds[j], bounds[j + 1] - bounds[j]) if bounds[j + 1] > bounds[j] else None for j in range(k)]


@dataclass
class TranscriptCache:
    """A file's utterances and their transcripts, by the file's sha256.

    Each transcription of a file (one ASR batch writes all of a file's utterance rows at
    once, with one ``created_at``) is kept whole: the newest complete one wins."""

    keys: np.ndarray  # uint64, sorted, unique: key64(audio_sha256, asr_config_hash)
    offsets: np.ndarray  # int64, len(keys) + 1: the rows of keys[i] are table[offsets[i]:offsets[i+1]]
    table: pa.Table  # TRANSCRIPT_COLUMNS + asr_config_hash, grouped by file, utterances in order

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> "TranscriptCache":
        return cls(np.zeros(0, np.uint64), np.zeros(1, np.int64),
                   S.TRANSCRIPTS_FILE_SCHEMA.empty_table().select([*TRANSCRIPT_COLUMNS, "asr_config_hash"]))

    @classmethod
    def load(cls, root: str, asr_config_hashes: Iterable[str]) -> "TranscriptCache":
        """The transcripts made with any of the given settings (a run looks up two: files
        transcribed whole, and segmented recordings)."""
        return cls.from_rows(cls.read(root, asr_config_hashes))

    @staticmethod
    def read(root: str, asr_config_hashes: Iterable[str], files: Optional[Sequence[str]] = None) -> Optional[pa.Table]:
        """The stored transcript rows made with any of the given settings (of the given
        ``files`` of the table only, when given): what :meth:`from_rows` builds a cache of."""
        import pyarrow.dataset as pads

        hashes = pa.array(sorted(set(asr_config_hashes)), pa.string())
        f = pads.field("asr_config_hash").isin(hashes) & pads.field("error").is_null() & pads.field("text").is_valid()
        return _read_table(root, "transcripts", [*TRANSCRIPT_COLUMNS, "asr_config_hash", "created_at"], f,
                           schema=S.TRANSCRIPTS_SCHEMA, files=files)

    @classmethod
    def from_rows(cls, t: Optional[pa.Table]) -> "TranscriptCache":
        """The cache of the rows :meth:`read` gives (all of each file's rows: a shard holds
        every row of the audio it holds)."""
        cols = [*TRANSCRIPT_COLUMNS, "asr_config_hash"]
        if t is None or t.num_rows == 0:
            return cls.empty()
        # newest transcription per (file, settings) wins, kept whole (its utterances share created_at)
        t = t.sort_by([("audio_sha256", "ascending"), ("asr_config_hash", "ascending"), ("created_at", "descending"),
                       ("segment_index", "ascending")])
        sha = t.column("audio_sha256").to_numpy(zero_copy_only=False)
        cfg = t.column("asr_config_hash").to_numpy(zero_copy_only=False)
        created = t.column("created_at").cast(pa.int64()).to_numpy()
        group = np.cumsum(np.r_[True, (sha[1:] != sha[:-1]) | (cfg[1:] != cfg[:-1])]) - 1  # (file, settings) of each row
        newest = created[np.r_[0, np.flatnonzero(np.diff(group)) + 1]]  # rows are newest first within a group
        keep = created == newest[group]
        t, sha, cfg, group = t.filter(pa.array(keep)), sha[keep], cfg[keep], group[keep]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        counts = np.diff(np.r_[starts, len(group)])
        expected = t.column("segment_count").fill_null(1).to_numpy()[starts]
        keys = np.array([key64(sha[i], cfg[i]) for i in starts], dtype=np.uint64)
        # a transcription missing one of its utterances is not a hit
        order = [i for i in np.argsort(keys, kind="stable") if counts[i] == expected[i]]
        rows = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in order]) if order else np.zeros(0, np.int64)
        offsets = np.r_[0, np.cumsum(counts[order])].astype(np.int64)
        return cls(keys[order], offsets, t.select(cols).take(pa.array(rows, pa.int64())))

    def find(self, shas: Sequence[str], asr_config_hash: str) -> np.ndarray:
        """The group (index into ``keys``) of each file's transcription under those settings,
        or -1: one vectorized lookup for a block of files. A 64-bit key collision is not a hit."""
        if not len(shas) or not len(self.keys):
            return np.full(len(shas), -1, np.int64)
        groups = _lookup(self.keys, np.array([key64(s, asr_config_hash) for s in shas], np.uint64))
        found = np.flatnonzero(groups >= 0)
        if len(found):
            first = pa.array(self.offsets[groups[found]], pa.int64())
            stored = zip(self.table.column("audio_sha256").take(first).to_pylist(),
                         self.table.column("asr_config_hash").take(first).to_pylist())
            groups[found[[(a, h) != (shas[k], asr_config_hash) for (a, h), k in zip(stored, found)]]] = -1
        return groups

    def durations(self, groups: np.ndarray) -> np.ndarray:
        """The stored duration of each group's file (NaN for -1)."""
        out = np.full(len(groups), np.nan)
        ok = groups >= 0
        if ok.any():
            out[ok] = self.table.column("duration_s").take(pa.array(self.offsets[groups[ok]], pa.int64())).to_numpy(zero_copy_only=False)
        return out

    def rows(self, groups: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        """The utterance rows of the given groups, one group after another, and each group's
        row count."""
        starts, stops = self.offsets[groups], self.offsets[groups + 1]
        counts = stops - starts
        take = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(int(counts.sum()))
        return self.table.take(pa.array(take, pa.int64())), counts


class Shards:
    """A cache in ``k`` shards by the sha256 its entries are keyed by (:func:`shard_of`): each
    part a cache, an ObjectRef to one (built by a Ray task, kept in the object store of the
    node that built it), or None when that shard is empty. A stage fetches only the shards
    its rows fall in and holds the last ``keep`` of them, so a worker never maps the whole of
    a large cache, and the object store may drop its copy of a shard no one holds."""

    def __init__(self, parts: Sequence[Any], size: int, keep: int = 2) -> None:
        self.parts, self.size, self.keep = tuple(parts), int(size), keep
        self._held: OrderedDict[int, Any] = OrderedDict()

    @classmethod
    def of(cls, value: Any) -> Optional["Shards"]:
        """``value`` as shards: a :class:`Shards` as it is, one cache as a single shard."""
        if value is None or isinstance(value, Shards):
            return value
        return cls((value,), len(value))

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:  # shards travel as refs, never with what a worker fetched
        return {"parts": self.parts, "size": self.size, "keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def k(self) -> int:
        return len(self.parts)

    def split(self, digests: Any) -> np.ndarray:
        """The shard of each key digest."""
        return shard_of(digests, self.k)

    def groups(self, shard: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
        """(cache, positions) for each non-empty shard that ``shard`` (each key's shard, as
        :meth:`split` gives) names: the keys a stage looks up in that shard."""
        for j in np.unique(shard).tolist():
            cache = self.get(j)
            if cache is not None:
                yield cache, np.flatnonzero(shard == j)

    def get(self, j: int) -> Any:
        """Shard ``j`` (None when empty), fetched from the object store on first use."""
        part = self.parts[j]
        if part is None or type(part).__name__ != "ObjectRef":
            return part
        if j in self._held:
            self._held.move_to_end(j)
            return self._held[j]
        import ray

        self._held[j] = cache = ray.get(part)
        while len(self._held) > self.keep:
            self._held.popitem(last=False)
        return cache


@dataclass(frozen=True)
class CacheSource:
    """Where one of a run's caches comes from: a table of an output root (``transcripts`` or
    ``scores``), read with the run's filter (``args``: the ASR config hashes; the scorer key
    and hypotheses), split into shards by the sha256 column its entries are keyed by."""

    table: str
    root: str
    args: tuple

    @property
    def shard_column(self) -> str:
        return "audio_sha256" if self.table == "transcripts" else "text_sha256"

    def files(self) -> list[tuple[str, int]]:
        return table_files(self.root, self.table)

    def read(self, files: Optional[Sequence[str]] = None) -> Optional[pa.Table]:
        reader = TranscriptCache.read if self.table == "transcripts" else ScoreCache.read
        return reader(self.root, *self.args, files=files)

    def build(self, rows: Optional[pa.Table]) -> Any:
        if self.table == "transcripts":
            return TranscriptCache.from_rows(rows)
        return ScoreCache.from_rows(rows, self.args[0])


def find_cached(cache: Optional[Shards], shas: Sequence[str], whole_hash: str, segmented_hash: str,
                applies: Callable[[float], bool]) -> tuple[np.ndarray, np.ndarray]:
    """(shard, group) of each file's cached transcription (:func:`cached_groups` in the
    shard its sha256 falls in); group -1 where there is none."""
    shard = np.zeros(len(shas), np.int64) if cache is None else cache.split(shas)
    groups = np.full(len(shas), -1, np.int64)
    if cache is None or not len(cache):
        return shard, groups
    for part, rows in cache.groups(shard):
        groups[rows] = cached_groups(part, [shas[i] for i in rows.tolist()], whole_hash, segmented_hash, applies)
    return shard, groups


def cached_groups(cache: Optional[TranscriptCache], shas: Sequence[str], whole_hash: str, segmented_hash: str,
                  applies: Callable[[float], bool]) -> np.ndarray:
    """Each file's cached transcription (a group of ``cache``), or -1, if it was transcribed
    before as this run would: whole (a clip the run would not segment, by its stored
    duration: ``applies(duration)`` is false) or segmented with the same settings."""
    if cache is None or not len(cache) or not len(shas):
        return np.full(len(shas), -1, np.int64)
    whole = cache.find(shas, whole_hash)
    segmented = cache.find(shas, segmented_hash)
    use_whole = [g >= 0 and not applies(d) for g, d in zip(whole, cache.durations(whole))]
    use_seg = [g >= 0 and applies(d) for g, d in zip(segmented, cache.durations(segmented))]
    return np.where(use_whole, whole, np.where(use_seg, segmented, -1))


def cached_mask(cache: Optional[TranscriptCache], shas: pa.Array, whole_hash: str, segmented_hash: str, segment: Any) -> np.ndarray:
    """Which of the files (their known sha256, null when unknown) the cache (or shard) has
    transcribed as this run would (:func:`cached_groups`; ``segment``: the run's
    SegmentConfig). Run in a Ray task beside the shard (:func:`labeler.runs.split_cached`)."""
    values = shas.to_pylist()
    known = [k for k, v in enumerate(values) if v is not None]
    mask = np.zeros(len(values), bool)
    if known:
        mask[known] = cached_groups(cache, [values[k] for k in known], whole_hash, segmented_hash, segment.applies) >= 0
    return mask


@dataclass
class ScoreCache:
    keys: np.ndarray  # uint64 sorted pair keys
    raw: np.ndarray  # float32 aligned with keys
    scorer_key: str

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls, scorer_key: str) -> "ScoreCache":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.float32), scorer_key)

    @classmethod
    def load(cls, root: str, scorer_key: str, hypotheses: Iterable[str]) -> "ScoreCache":
        return cls.from_rows(cls.read(root, scorer_key, hypotheses), scorer_key)

    @staticmethod
    def read(root: str, scorer_key: str, hypotheses: Iterable[str], files: Optional[Sequence[str]] = None) -> Optional[pa.Table]:
        """The stored scores of the scorer for the given hypotheses (of the given ``files`` of
        the table only, when given), with the ``text_sha256`` a sharded build splits them by."""
        import pyarrow.dataset as pads

        hyps = pa.array(sorted(set(hypotheses)), pa.string())
        f = (pads.field("scorer_key") == scorer_key) & pads.field("hypothesis").isin(hyps)
        return _read_table(root, "scores", ["pair_key", "raw_score", "text_sha256"], f, files=files)

    @classmethod
    def from_rows(cls, t: Optional[pa.Table], scorer_key: str) -> "ScoreCache":
        if t is None or t.num_rows == 0:
            return cls.empty(scorer_key)
        keys = t.column("pair_key").to_numpy()
        raw = t.column("raw_score").to_numpy()
        keys, idx = np.unique(keys, return_index=True)  # a pair scored twice: any copy will do
        return cls(keys.astype(np.uint64), raw[idx].astype(np.float32), scorer_key)

    def pair_key(self, text: str, hypothesis: str) -> int:
        return pair_key(self.scorer_key, text, hypothesis)

    def lookup(self, pair_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, raw scores where found)."""
        idx = _lookup(self.keys, pair_keys)
        found = idx >= 0
        raw = np.zeros(len(pair_keys), np.float32)
        raw[found] = self.raw[idx[found]]
        return found, raw


def cache_summary(root: str) -> dict:
    """What the caches hold: transcripts per ASR config, scores per scorer (for `lanser-label cache`)."""
    out: dict = {"transcripts": [], "scores": []}
    t = _read_table(root, "transcripts", ["asr_config_hash", "asr_model", "audio_sha256", "run_id", "error"], None)
    if t is not None and t.num_rows:
        t = t.filter(pc.is_null(t.column("error")))
        g = t.group_by(["asr_config_hash", "asr_model"]).aggregate([("audio_sha256", "count_distinct"), ("run_id", "count_distinct")])
        for r in g.to_pylist():
            out["transcripts"].append({"asr_config_hash": r["asr_config_hash"], "asr_model": r["asr_model"],
                                       "audio": r["audio_sha256_count_distinct"], "runs": r["run_id_count_distinct"]})
    s = _read_table(root, "scores", ["scorer_key", "scorer", "pair_key", "hypothesis", "run_id"], None)
    if s is not None and s.num_rows:
        g = s.group_by(["scorer_key", "scorer"]).aggregate([("pair_key", "count_distinct"), ("hypothesis", "count_distinct"), ("run_id", "count_distinct")])
        for r in g.to_pylist():
            out["scores"].append({"scorer_key": r["scorer_key"], "scorer": r["scorer"], "pairs": r["pair_key_count_distinct"],
                                  "hypotheses": r["hypothesis_count_distinct"], "runs": r["run_id_count_distinct"]})
    return out


def drop_cache_entries(root: str, asr_config_hashes: Iterable[str], scorer_keys: Iterable[str]) -> dict:
    """Delete cached transcripts of the given ASR configs and scores of the given scorers.

    Labels tables are never touched. Transcripts are partitioned by run, and one run uses
    one ASR config, so whole run partitions are deleted; scores are partitioned by scorer.
    """
    import pyarrow.fs as pafs

    asr = set(asr_config_hashes)
    dropped = {"transcript_runs": [], "scorers": []}
    fs, tpath = filesystem(join(root, "transcripts"))
    for info in fs.get_file_info(pafs.FileSelector(tpath, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        t = _read_table(root, f"transcripts/{info.base_name}", ["asr_config_hash"], None)
        hashes = set(t.column("asr_config_hash").to_pylist()) if t is not None else set()
        if hashes and hashes <= asr:
            fs.delete_dir(info.path)
            dropped["transcript_runs"].append(info.base_name.removeprefix("run_id="))
    fs, spath = filesystem(join(root, "scores"))
    for key in set(scorer_keys):
        p = f"{spath}/scorer_key={key}"
        if fs.get_file_info(p).type == pafs.FileType.Directory:
            fs.delete_dir(p)
            dropped["scorers"].append(key)
    return dropped


#: The key columns of the ``sources/`` table that tell an unchanged file from a changed one.
SOURCE_KEY_COLUMNS = ["uri", "source_size", "source_version", "audio_sha256", "created_at"]


def read_sources(root: str, files: Optional[Sequence[str]] = None) -> Optional[pa.Table]:
    """The key columns of the root's ``sources/`` table (of the given ``files`` of it, when
    given): every file an earlier run read, with its sha256 (about 150 bytes a file, no text)."""
    import pyarrow.dataset as pads

    return _read_table(root, "sources", SOURCE_KEY_COLUMNS, pads.field("audio_sha256").is_valid(), files=files)


def known_sources(todo: pa.Table, idx: Optional[pa.Table], rehash: bool = False) -> tuple[pa.Table, dict[str, int]]:
    """``todo`` with ``known_sha256``: the sha256 an earlier run read (``idx``, rows of
    :func:`read_sources`: those of ``todo``'s URIs at least) for a file whose URI, size and
    version (modification time, ETag, version id, as the listing gives them) are the same
    now (null otherwise, and for every row when ``rehash``), so decode need not open it.
    Also counts the listed files ``new`` (their URI never read before) and ``changed``
    (read before, with another size or version). A label run calls it in a Ray task for each
    part of its listing (:func:`labeler.runs.known_inputs`), so that is a worker's memory."""
    from labeler.io import redact

    n = todo.num_rows
    none = pa.nulls(n, pa.string())
    counts = {"sources_new": 0, "sources_changed": 0}
    if "source_size" not in todo.column_names:
        return todo.append_column("known_sha256", none), counts
    listed = pc.and_(pc.is_valid(todo.column("source_size")), pc.is_valid(todo.column("source_version")))
    uris = todo.column("uri").to_pylist()
    uri_keys = pa.array([redact(u) for u in uris], pa.string())  # stored URIs are redacted
    if idx is None or idx.num_rows == 0:
        counts["sources_new"] = int(pc.sum(listed).as_py() or 0)
        return todo.append_column("known_sha256", none), counts
    # the newest read of each (uri, size, version) wins
    idx = idx.sort_by([("created_at", "descending")])

    def key(u, size, version):
        return pc.binary_join_element_wise(u, pc.cast(size, pa.string()), version, "\x00")

    want = key(uri_keys, todo.column("source_size"), todo.column("source_version"))
    have = key(idx.column("uri"), idx.column("source_size"), idx.column("source_version"))
    pos = pc.index_in(want, value_set=have)  # first match = newest
    seen = pc.is_in(uri_keys, value_set=pc.unique(idx.column("uri")))
    matched = pc.is_valid(pos)
    counts["sources_new"] = int(pc.sum(pc.and_(listed, pc.invert(seen))).as_py() or 0)
    counts["sources_changed"] = int(pc.sum(pc.and_(pc.and_(listed, seen), pc.invert(matched))).as_py() or 0)
    if rehash:
        return todo.append_column("known_sha256", none), counts
    known = pc.take(idx.column("audio_sha256"), pos)
    return todo.append_column("known_sha256", known.cast(pa.string())), counts
