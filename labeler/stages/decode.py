"""Decode: read each file, hash its bytes, decode it to 16 kHz mono float32, find its speech.

A file an earlier run read, listed now with the same URI, size and version (modification
time, ETag or version id; ``known_sha256``, set by :func:`labeler.cache.known_sources`), is
not even opened when its transcripts are in the cache: its sha256 is taken as known. Any
other file is read and hashed, and its listing metadata goes to the ``sources/`` table.
A file already transcribed with the same ASR and segmentation settings (found by its sha256
in the transcript cache) is not decoded: it becomes its stored utterance rows, each with its
transcript and no ``audio``, so ASR passes them by. A recording that is to be segmented
(``segment.mode``, :meth:`~labeler.config.SegmentConfig.applies`) also gets its speech
regions (``speech``, Silero VAD, here on the CPU), which ASR transcribes and cuts into
utterances.

Memory stays bounded for any length: a file is read once when small (``decode.read_whole_max_mb``)
or hashed in a streaming read and decoded from its URI; audio is decoded as a stream of
blocks and VAD runs over bounded windows (``segment.vad_window_s``); a recording longer than
``decode.stream_above_s`` travels without its audio (ASR reads its speech again from the
file, a window at a time), so no row carries more than that much float32. A missing, unreadable, empty, too long or non-audio file becomes a row whose
``error`` says why; a row that already carries an error passes through untouched.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.config import LabelConfig
from labeler.segment import WindowedVAD, utterance_id
from labeler.cache import Shards
from labeler.stages.base import Stage, StageContext, columns, stage_error


class DecodeStage(Stage):
    name = "decode"
    reads = ("utt_id", "uri", "error")
    optional_reads = ("source_size", "source_version", "known_sha256")  # from the input listing and earlier runs
    writes = ("utt_id", *S.SPAN_COLUMNS, "audio_sha256", "duration_s", "audio", "speech", "source_utterances", "error",
              *S.TRANSCRIPT_COLUMNS, "asr_config_hash", "deferred")
    expands = True  # a cached recording becomes its stored utterances

    def __init__(self, cfg: LabelConfig, ctx: StageContext) -> None:
        super().__init__(cfg, ctx)
        self.max_duration_s = cfg.decode.max_duration_s
        self.stream_above_s = cfg.decode.stream_above_s
        self.read_whole_max_mb = cfg.decode.read_whole_max_mb
        self.segment = cfg.segment
        self.whole_hash, self.segmented_hash = cfg.asr.config_hash(), cfg.segmented_hash()
        # the second pass looks up this run's own transcripts, whatever cache.transcripts says
        cache = Shards.of(ctx.transcript_cache) if cfg.cache.transcripts or ctx.second_pass else None
        self.cache = cache if cache is not None and len(cache) else None
        self.dedupe, self.second_pass = ctx.dedupe, ctx.second_pass

    @classmethod
    def resources(cls, cfg: LabelConfig) -> dict[str, Any]:
        d = cfg.decode
        return {"num_cpus": d.num_cpus, "concurrency": d.concurrency, "batch_size": d.rows_per_block}

    def process(self, batch: pa.Table) -> pa.Table:
        from labeler.audio import AudioError, read_or_hash

        out: dict[str, list] = {c: [] for c in (*self.writes, "parent_row")}
        self.count(transcripts_from_cache=0)

        def row(i: int, **values) -> None:
            for c in out:
                out[c].append(values.get(c))
            out["parent_row"][-1] = i

        n = batch.num_rows
        opt = {c: batch.column(c).to_pylist() if c in batch.column_names else [None] * n for c in self.optional_reads}
        listed: dict[str, list] = {"uri": [], "source_size": [], "source_version": [], "audio_sha256": []}

        sources, errors = batch.column("utt_id").to_pylist(), batch.column("error").to_pylist()
        # files unchanged since an earlier run read them, whose transcripts are cached: not
        # opened; they, and files read that the cache knows, become their stored utterances,
        # taken from the cache as one Arrow block at the end
        ask = [i for i, (k, e) in enumerate(zip(opt["known_sha256"], errors)) if k is not None and e is None]
        shards, groups = self.cached_groups([opt["known_sha256"][i] for i in ask])
        hits = {ask[k]: (int(j), int(g)) for k, (j, g) in enumerate(zip(shards, groups)) if g >= 0}  # row -> (shard, group)
        self.count(sources_skipped_by_metadata=len(hits))
        skip = set(hits)
        for i, (source, uri, error, size, version, known) in enumerate(
                zip(sources, batch.column("uri").to_pylist(), errors, *opt.values())):
            if i in skip:
                continue
            if error is not None:
                row(i, utt_id=source, source_id=source, error=error, source_utterances=1)
                continue
            sha = duration = None
            try:
                sha, data = read_or_hash(uri, int(self.read_whole_max_mb * 2**20))  # sha kept even when decoding fails
                self.count(audio_files_read=1)
                if size is not None and version is not None and sha != known:  # (known: already in sources/)
                    for c, v in (("uri", uri), ("source_size", size), ("source_version", version), ("audio_sha256", sha)):
                        listed[c].append(v)
                shard, group = self.cached_groups([sha])
                if group[0] >= 0:
                    hits[i] = (int(shard[0]), int(group[0]))
                    continue
                if self.dedupe and not self.report.claim(sha, source):
                    # another input of this run has the same audio: it waits for that one's transcript
                    row(i, utt_id=source, source_id=source, audio_sha256=sha, source_utterances=1, deferred=True)
                    self.count(copies_deferred=1)
                    continue
                if data is not None and not data:
                    raise AudioError("empty file (0 bytes)")
                waveform, duration, speech = self.decode(data if data is not None else uri)
                if speech is not None:
                    self.count(sources_segmented=1, speech_regions=len(speech),
                               speech_region_seconds=sum(e - s for s, e in speech))
                if speech is not None and waveform is None:
                    self.count(sources_streamed=1)  # ASR reads its audio again, a window at a time
                whole = speech is None
                row(i, utt_id=source, source_id=source, audio_sha256=sha, duration_s=duration,
                    audio=None if waveform is None else waveform.tobytes(), speech=speech,
                    source_utterances=1 if whole else None,
                    segment_index=0 if whole else None, start_s=0.0 if whole else None, end_s=duration if whole else None)
            except Exception as exc:  # AudioError or anything else: a per-file failure is data
                row(i, utt_id=source, source_id=source, audio_sha256=sha, duration_s=duration,
                    error=stage_error(self.name, exc), source_utterances=1)
        if listed["uri"]:
            import datetime as dt

            now = dt.datetime.now(dt.timezone.utc)
            self.emit("sources", pa.table({**listed, "created_at": pa.array([now] * len(listed["uri"]), S.TIMESTAMP)}))
        if not hits:
            return columns(out)
        cached = []
        for j in sorted({j for j, _ in hits.values()}):
            rows = np.array(sorted(i for i, (s, _) in hits.items() if s == j), np.int64)
            cached.append(self.from_cache_block(j, rows, np.array([hits[i][1] for i in rows.tolist()], np.int64), sources))
        merged = pa.concat_tables([columns(out), *cached])
        return merged.take(pa.array(np.argsort(merged.column("parent_row").to_numpy(), kind="stable")))

    def from_cache_block(self, shard: int, rows: np.ndarray, groups: np.ndarray, sources: list[str]) -> pa.Table:
        """The stored utterances of the batch's ``rows`` (their ``groups`` in cache
        ``shard``), as this stage's output columns, with ``parent_row``."""
        t, counts = self.cache.get(shard).rows(groups)
        parent = np.repeat(rows, counts)
        source = [sources[i] for i in parent.tolist()]
        seg_count, seg_index, start, end, dur = (t.column(c).to_pylist() for c in ("segment_count", "segment_index", "start_s", "end_s", "duration_s"))
        utt = [src if (n == 1 and a == 0 and b == d) or k is None else utterance_id(src, a, b)
               for src, n, k, a, b, d in zip(source, seg_count, seg_index, start, end, dur)]
        nulls = pa.nulls(len(parent))
        values = {"utt_id": utt, "source_id": source, "source_utterances": np.repeat(counts, counts),
                  **{c: t.column(c) for c in ("audio_sha256", "duration_s", "segment_index", "start_s", "end_s", *S.TRANSCRIPT_COLUMNS, "asr_config_hash")},
                  "parent_row": parent}
        if self.second_pass:
            self.count(transcripts_from_this_run=len(rows))
        else:
            self.count(transcripts_from_cache=len(rows), utterances_from_cache=len(parent))
        return pa.table({c: values[c].cast(S.column_type(c)) if isinstance(values.get(c), pa.ChunkedArray)
                         else pa.array(values[c], S.column_type(c)) if c in values else nulls.cast(S.column_type(c))
                         for c in (*self.writes, "parent_row")})

    def decode(self, source) -> tuple[Optional[np.ndarray], float, Optional[list[list[float]]]]:
        """(waveform, duration_s, speech regions) of a file, decoded as a stream: the waveform
        is kept only while the recording is short enough to travel in its row (None for a
        long recording that is segmented: ASR reads it again); VAD runs on bounded windows.
        The speech regions are None for a file that is transcribed whole."""
        from labeler.audio import SAMPLE_RATE, AudioError, PcmStream

        segmenting = self.segment.mode != "off"
        vad = WindowedVAD(self.segment) if segmenting else None
        kept: Optional[list[np.ndarray]] = []
        n = 0
        for block in PcmStream(source):
            n += block.size
            if n > self.max_duration_s * SAMPLE_RATE:
                raise AudioError(f"recording is over decode.max_duration_s={self.max_duration_s:.0f} s long")
            if vad is not None:
                vad.feed(block)
            if kept is not None:
                kept.append(block)
                if n > self.stream_above_s * SAMPLE_RATE and self.segment.applies(n / SAMPLE_RATE):
                    kept = None  # long: the row carries the speech regions, not the audio
        duration = n / SAMPLE_RATE
        applies = self.segment.applies(duration)
        speech = [list(r) for r in vad.finish(run=applies)] if vad is not None and applies else None
        waveform = None if kept is None else (np.concatenate(kept) if len(kept) > 1 else kept[0])
        return waveform, duration, speech

    def cached_groups(self, shas: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`labeler.cache.find_cached` under this run's settings: (shard, group) of each."""
        from labeler.cache import find_cached

        return find_cached(self.cache, shas, self.whole_hash, self.segmented_hash, self.segment.applies)
