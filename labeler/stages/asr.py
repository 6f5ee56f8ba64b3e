"""ASR: faster-whisper over the decoded audio of a batch (:mod:`labeler.models.whisper`).

Rows with ``audio`` are transcribed, all of a batch at once so short clips and the speech
regions of long recordings share packed 30-s windows; a recording too long to travel with
its audio (``decode.stream_above_s``) comes with its speech regions only and is read again
from its file, a bounded window at a time. Rows with neither (an error, or an utterance
from the transcript cache) pass through. A short clip stays one row, its
transcript that of the whole clip. A recording with speech regions (``speech``, from
decode) is transcribed region by region with word timestamps and becomes its utterance
rows (:mod:`labeler.segment`), or, when no utterance survives, one row that abstains with
``no_speech``; the segments dropped as junk are counted by reason. The same audio twice in a
batch is transcribed once.

The waveform is dropped here: tables keep the URI, not the audio. Each file's new
utterances also go to the transcripts table (the transcript cache of later runs) through
the collector, all of a file's rows in one entry. The model loads once per actor, on the
first batch that needs it; a clip that fails to transcribe becomes an error row, a failing
device stops the job.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.audio import SAMPLE_RATE
from labeler.config import LabelConfig
from labeler.segment import Word, build_utterances, utterance_id
from labeler.stages.base import Stage, StageContext, columns, stage_error

#: Columns of a transcripts-table entry that come from the row as it reached ASR.
_ENTRY_FROM_ROW = ("uri", "audio_sha256", "duration_s", "source_id")
_OUT = ("utt_id", "segment_index", "start_s", "end_s", "source_utterances", *S.TRANSCRIPT_COLUMNS, "error")


class ASRStage(Stage):
    name = "asr"
    reads = ("utt_id", *S.SPAN_COLUMNS, "uri", "audio_sha256", "duration_s", "audio", "speech", "source_utterances",
             "error", *S.TRANSCRIPT_COLUMNS, "asr_config_hash")
    writes = (*_OUT, "asr_model", "asr_config_hash")
    drops = ("audio", "speech")
    expands = True  # a segmented recording becomes its utterances

    def __init__(self, cfg: LabelConfig, ctx: StageContext) -> None:
        super().__init__(cfg, ctx)
        self.asr = cfg.asr
        self.segment = cfg.segment
        self.whole_hash, self.segmented_hash = cfg.asr.config_hash(), cfg.segmented_hash()
        self.stream_window_s = cfg.decode.stream_above_s
        self._model = None

    @classmethod
    def resources(cls, cfg: LabelConfig) -> dict[str, Any]:
        a = cfg.asr
        return {"num_cpus": a.num_cpus, "num_gpus": a.num_gpus, "concurrency": a.concurrency, "batch_size": a.batch_size}

    @property
    def model(self):
        if self._model is None:
            from labeler.models.whisper import WhisperASR

            self._model = WhisperASR(self.asr)
        return self._model

    def process(self, batch: pa.Table) -> pa.Table:
        self.count(transcribed=0)  # the manifest says 0, not nothing, when all came from the cache
        rows = batch.to_pylist()
        # The transcription jobs: a whole clip, or each speech region of a recording; audio
        # seen before in this batch (same sha256) reuses the first copy's results.
        jobs: list[tuple[int, float, float]] = []  # (row, start_s, end_s); end < 0: the whole clip
        first_of: dict[str, int] = {}
        same_as: dict[int, int] = {}
        streamed: list[int] = []  # long recordings that travel without their audio
        for i, r in enumerate(rows):
            if not _to_transcribe(r):
                continue
            if r["audio_sha256"] in first_of:
                same_as[i] = first_of[r["audio_sha256"]]
                continue
            first_of[r["audio_sha256"]] = i
            if r["audio"] is None:
                streamed.append(i)
            elif r["speech"] is None:
                jobs.append((i, 0.0, -1.0))
            else:
                jobs.extend((i, float(s), float(e)) for s, e in r["speech"])
        results = self._transcribe(rows, jobs) if jobs else []
        by_row: dict[int, list] = {}
        for (i, s, _), res in zip(jobs, results):
            by_row.setdefault(i, []).append((s, res))
        for i in streamed:
            by_row[i] = self._transcribe_streamed(rows[i])

        out: dict[str, list] = {c: [] for c in (*_OUT, "asr_config_hash", "parent_row")}
        emitted: list[int] = []  # output rows of the files transcribed here (first copies)
        for i, r in enumerate(rows):
            if not _to_transcribe(r):
                new = [{c: r.get(c) for c in _OUT}]  # an error, or an utterance from the cache
                new[0]["asr_config_hash"] = r["asr_config_hash"] or self.whole_hash
            else:
                done = by_row.get(same_as.get(i, i), [])
                new = [self._whole(r, done)] if r["speech"] is None else self._utterances(r, done)
                for u in new:
                    u["asr_config_hash"] = self.whole_hash if r["speech"] is None else self.segmented_hash
                if i not in same_as:
                    emitted.extend(range(len(out["parent_row"]), len(out["parent_row"]) + len(new)))
                if i in same_as:
                    self.count(transcripts_from_this_run=1)  # a copy of audio already in the batch
                else:
                    self.count(transcribed=1)
            for u in new:
                for c in (*_OUT, "asr_config_hash"):
                    out[c].append(u.get(c))
                out["parent_row"].append(i)
        out["asr_model"] = [self.asr.model] * len(out["parent_row"])
        written = columns(out)
        if emitted:
            self._emit_transcripts(batch, written, emitted)
        return written

    def _transcribe(self, rows: list[dict], jobs: list[tuple[int, float, float]]) -> list:
        waves, words = [], []
        for i, s, e in jobs:
            audio = np.frombuffer(rows[i]["audio"], dtype=np.float32)
            waves.append(audio if e < 0 else audio[int(round(s * SAMPLE_RATE)):int(round(e * SAMPLE_RATE))])
            words.append(e >= 0)
        return self._run(waves, words)

    def _run(self, waves: list[np.ndarray], words: list[bool]) -> list:
        model = self.model
        before = dict(model.stats)
        results = model.transcribe_batch(waves, words=words, in_order=words)  # regions: in time order
        self.count(**{k: v - before.get(k, 0) for k, v in model.stats.items()})
        return results

    def _transcribe_streamed(self, r: dict) -> list:
        """A long recording's speech regions, read again from its file a window at a time
        (``decode.stream_above_s`` of speech per window, the next one decoded while this one
        is transcribed): [(region start, result)], like the regions of a row with audio. A
        file that no longer has the length decode saw fails the whole recording."""
        from labeler.audio import AudioError, PcmStream, prefetch, spans_of_stream

        regions = [(float(s), float(e)) for s, e in r["speech"]]
        seen = [0]

        def blocks():
            for block in PcmStream(r["uri"]):
                seen[0] += block.size
                yield block

        done: list = []
        try:
            for group in prefetch(spans_of_stream(blocks(), regions, self.stream_window_s)):
                results = self._run([w for _, w in group], [True] * len(group))
                done += [(regions[k][0], res) for (k, _), res in zip(group, results)]
                self.count(streamed_windows=1)
        except (AudioError, OSError) as exc:  # unreadable now: the recording's row says so (a device failure still raises)
            return [(0.0, RecordingError(f"reading the recording again: {exc}"))]
        if abs(seen[0] / SAMPLE_RATE - float(r["duration_s"])) > 0.05:
            return [(0.0, RecordingError(f"the file changed during the run ({seen[0] / SAMPLE_RATE:.1f} s of audio now, "
                                         f"{float(r['duration_s']):.1f} s when decoded)"))]
        self.count(sources_streamed=1)
        return done

    def _whole(self, r: dict, done: list) -> dict:
        """A short clip: one row, the whole clip's transcript (or its error)."""
        res = done[0][1]
        u = {c: r.get(c) for c in _OUT}
        if isinstance(res, Exception):  # per-clip failure is data; device failures raised
            u["error"] = stage_error(self.name, res)
        else:
            u.update({c: getattr(res, c) for c in S.TRANSCRIPT_COLUMNS})
        return u

    def _utterances(self, r: dict, done: list) -> list[dict]:
        """A segmented recording: its utterance rows, or one row that abstains (no speech)."""
        base = {"utt_id": r["source_id"], "segment_index": None, "start_s": 0.0, "end_s": r["duration_s"],
                "source_utterances": 1}
        failed = [(s, res) for s, res in done if isinstance(res, Exception)]
        if failed:
            s, res = failed[0]
            why = res if isinstance(res, RecordingError) else RuntimeError(f"speech region at {s:.1f} s: {res}")
            return [{**base, "error": stage_error(self.name, why)}]
        words: list[Word] = []
        langs: Counter = Counter()
        lang_probs = []
        for s, res in done:
            words.extend(Word(s + w.start, s + w.end, w.text, w.prob, w.no_speech_prob) for w in (res.words or ()))
            if res.language:
                langs[res.language] += len(res.words or ()) or 1
            if res.language_prob is not None:
                lang_probs.append(res.language_prob)
        kept, dropped = build_utterances(words, float(r["duration_s"]), self.segment)
        self.count(utterances=len(kept), **{f"dropped_{k}": v for k, v in dropped.items()})
        if not kept:
            self.count(sources_without_speech=1)
            return [{**base, "text": "", "language": None, "language_prob": None, "avg_logprob": None, "no_speech_prob": None}]
        language = langs.most_common(1)[0][0] if langs else None
        lang_prob = float(np.mean(lang_probs)) if lang_probs else None
        return [{
            "utt_id": utterance_id(r["source_id"], u.start, u.end), "segment_index": k, "start_s": u.start, "end_s": u.end,
            "source_utterances": len(kept), "text": u.text, "language": language, "language_prob": lang_prob,
            "avg_logprob": u.avg_logprob, "no_speech_prob": u.no_speech_prob, "error": None,
        } for k, u in enumerate(kept)]

    def _emit_transcripts(self, batch: pa.Table, written: pa.Table, emitted: list[int]) -> None:
        """What this batch transcribed (or failed to) becomes transcripts-table entries, all
        of a file's utterances in one entry with one ``created_at``."""
        take = pa.array(emitted, pa.int64())
        parents = written.column("parent_row").take(take)
        entry = {c: batch.column(c).take(parents) for c in _ENTRY_FROM_ROW}
        entry.update({c: written.column(c).take(take) for c in written.column_names if c != "parent_row"})
        entry["segment_count"] = entry.pop("source_utterances")
        entry["created_at"] = pa.array([dt.datetime.now(dt.timezone.utc)] * len(emitted), S.TIMESTAMP)
        self.emit("transcripts", pa.table(entry))


class RecordingError(RuntimeError):
    """A whole recording failed (its file cannot be read again, or changed), not one region."""


def _to_transcribe(r: dict) -> bool:
    """A row ASR works on: decoded audio, or a long recording's speech regions (its audio is
    read again from the file). Errors and utterances from the transcript cache pass by."""
    return r["error"] is None and (r["audio"] is not None or r["speech"] is not None)
