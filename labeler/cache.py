"""Transcript and score caches, read from an output root's own tables.

- **Transcripts** (``transcripts/``): keyed by audio sha256 x ASR config hash. A labeling
  run sends through ASR only audio not yet transcribed with the same settings.
- **Scores** (``scores/``): keyed by (scorer key, transcript text, hypothesis text). A new
  taxonomy that shares labels with an old one scores only the new pairs.

Both are built once per run by a Ray task (:func:`labeler.runs.load_caches`; the driver holds
only an object ref) into sorted ``uint64`` key arrays (binary search, 12-20 bytes per entry)
and shared with the workers through Ray's object store. Lookups take a block of keys at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

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


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index into ``keys`` (sorted) of each wanted key, or -1."""
    if len(keys) == 0 or len(wanted) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    pos = np.searchsorted(keys, wanted)
    pos = np.minimum(pos, len(keys) - 1)
    return np.where(keys[pos] == wanted, pos, -1)


def _read_table(root: str, sub: str, columns: list[str], filter_expr, schema: Optional[pa.Schema] = None) -> Optional[pa.Table]:
    """Rows of one of the root's tables; with ``schema``, files written before a column was
    added read it as null."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, path = filesystem(join(root, sub))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    ds = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive", exclude_invalid_files=False, schema=schema)
    if not ds.files:
        return None
    return ds.to_table(columns=columns, filter=filter_expr)


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
        import pyarrow.dataset as pads

        hashes = pa.array(sorted(set(asr_config_hashes)), pa.string())
        f = pads.field("asr_config_hash").isin(hashes) & pads.field("error").is_null() & pads.field("text").is_valid()
        cols = [*TRANSCRIPT_COLUMNS, "asr_config_hash"]
        t = _read_table(root, "transcripts", [*cols, "created_at"], f, schema=S.TRANSCRIPTS_SCHEMA)
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
    """Which of the files (their known sha256, null when unknown) the cache has transcribed
    as this run would (:func:`cached_groups`; ``segment``: the run's SegmentConfig). Run as
    a Ray task beside the cache, so the driver gets only the mask."""
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
        import pyarrow.dataset as pads

        hyps = pa.array(sorted(set(hypotheses)), pa.string())
        f = (pads.field("scorer_key") == scorer_key) & pads.field("hypothesis").isin(hyps)
        t = _read_table(root, "scores", ["pair_key", "raw_score"], f)
        if t is None or t.num_rows == 0:
            return cls.empty(scorer_key)
        keys = t.column("pair_key").to_numpy()
        raw = t.column("raw_score").to_numpy()
        keys, idx = np.unique(keys, return_index=True)  # a pair scored twice: any copy will do
        return cls(keys.astype(np.uint64), raw[idx].astype(np.float32), scorer_key)

    def pair_key(self, text: str, hypothesis: str) -> int:
        return key64(self.scorer_key, text, hypothesis)

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


def known_sources(root: str, todo: pa.Table, rehash: bool = False) -> tuple[pa.Table, dict[str, int]]:
    """``todo`` with ``known_sha256``: the sha256 an earlier run read for a file whose URI,
    size and version (modification time, ETag, version id, as the listing gives them) are
    the same now (null otherwise, and for every row when ``rehash``), so decode need not open
    it. Also counts the listed files ``new`` (their URI never read before) and ``changed``
    (read before, with another size or version).

    Held on the driver: the ``sources/`` table's key columns (URI, size, version, sha256;
    about 150 bytes per file ever read, no text) and one key per input row."""
    import pyarrow.dataset as pads

    from labeler.io import redact

    n = todo.num_rows
    none = pa.nulls(n, pa.string())
    counts = {"sources_new": 0, "sources_changed": 0}
    if "source_size" not in todo.column_names:
        return todo.append_column("known_sha256", none), counts
    idx = _read_table(root, "sources", ["uri", "source_size", "source_version", "audio_sha256", "created_at"],
                      pads.field("audio_sha256").is_valid())
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
