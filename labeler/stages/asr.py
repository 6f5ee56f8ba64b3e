"""ASR: faster-whisper over the decoded audio of a batch (:mod:`labeler.models.whisper`).

Rows with ``audio`` are transcribed, all of a batch at once so short clips share packed
30-s windows; rows without (an error, or a transcript from the cache) pass through. The
waveform is dropped here: tables keep the URI, not the audio. Each new transcript also
goes to the transcripts table (the transcript cache of later runs) through the collector.
The model loads once per actor, on the first batch that needs it; a clip that fails to
transcribe becomes an error row, a failing device stops the job.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.config import LabelConfig
from labeler.stages.base import Stage, StageContext, columns, stage_error

#: Columns of a transcripts-table entry that come from the row as it reached ASR.
_ENTRY_FROM_ROW = ("utt_id", "uri", "audio_sha256", "duration_s")


class ASRStage(Stage):
    name = "asr"
    reads = (*_ENTRY_FROM_ROW, "audio", "error", *S.TRANSCRIPT_COLUMNS)
    writes = (*S.TRANSCRIPT_COLUMNS, "error", "asr_model", "asr_config_hash")
    drops = ("audio",)

    def __init__(self, cfg: LabelConfig, ctx: StageContext) -> None:
        super().__init__(cfg, ctx)
        self.asr = cfg.asr
        self.config_hash = cfg.asr.config_hash()
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
        n = batch.num_rows
        audio = batch.column("audio").to_pylist()
        out: dict[str, list] = {c: batch.column(c).to_pylist() for c in (*S.TRANSCRIPT_COLUMNS, "error")}
        todo = [i for i in range(n) if out["error"][i] is None and audio[i] is not None]
        if todo:
            model = self.model
            before = dict(model.stats)
            results = model.transcribe_batch([np.frombuffer(audio[i], dtype=np.float32) for i in todo])
            self.count(**{k: v - before.get(k, 0) for k, v in model.stats.items()})
            for i, res in zip(todo, results):
                if isinstance(res, Exception):  # per-clip failure is data; device failures raised
                    out["error"][i] = stage_error(self.name, res)
                    continue
                for c in S.TRANSCRIPT_COLUMNS:
                    out[c][i] = getattr(res, c)
            self.count(transcribed=sum(out["error"][i] is None for i in todo))
        out["asr_model"] = [self.asr.model] * n
        out["asr_config_hash"] = [self.config_hash] * n
        written = columns(out)
        if todo:
            self._emit_transcripts(batch, written, todo)
        return written

    def _emit_transcripts(self, batch: pa.Table, written: pa.Table, todo: list[int]) -> None:
        """What this batch transcribed (or failed to) becomes transcripts-table entries."""
        rows = pa.array(todo)
        entry = {c: batch.column(c).take(rows) for c in _ENTRY_FROM_ROW}
        entry.update({c: written.column(c).take(rows) for c in written.column_names})
        entry["created_at"] = pa.array([dt.datetime.now(dt.timezone.utc)] * len(todo), S.TIMESTAMP)
        self.emit("transcripts", pa.table(entry))
