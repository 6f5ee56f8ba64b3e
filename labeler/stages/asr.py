"""ASR stage (actor pool): faster-whisper over the decoded audio.

Input columns: ``utt_id``, ``audio``, ``error``, ``asr_cached`` and the transcript
columns. Fills ``text``, ``language``, ``language_prob``, ``avg_logprob``,
``no_speech_prob`` for rows not already transcribed (cache hits pass through), adds
``asr_model``, ``asr_config_hash``, ``t_asr``; drops ``audio`` (tables keep the URI, not the
waveform). The model loads once per actor, on the first batch that needs it; a clip that
fails to transcribe becomes an error row. The whole batch goes to the model at once, so
short clips are packed into shared 30-s windows (see :mod:`labeler.models.whisper`).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from labeler.stages.base import check_rows, require_columns, stage_error, with_columns

INPUT_COLUMNS = ("utt_id", "audio", "error", "asr_cached", "text", "language", "language_prob", "avg_logprob", "no_speech_prob")


class ASRStage:
    name = "asr"

    def __init__(self, asr_cfg) -> None:
        self.cfg = asr_cfg
        self._model = None
        self.config_hash = asr_cfg.config_hash()

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        from labeler.models.whisper import WhisperASR

        asr_cfg = self.cfg
        return WhisperASR(
            asr_cfg.model,
            device=asr_cfg.device,
            compute_type=asr_cfg.compute_type,
            cpu_threads=asr_cfg.cpu_threads,
            language=asr_cfg.language,
            beam_size=asr_cfg.beam_size,
            vad_filter=asr_cfg.vad_filter,
            vad_min_silence_ms=asr_cfg.vad_min_silence_ms,
            condition_on_previous_text=asr_cfg.condition_on_previous_text,
            chunk_batch_size=asr_cfg.chunk_batch_size,
            pack_clips=asr_cfg.pack_clips,
            pack_window_s=asr_cfg.pack_window_s,
            pack_gap_s=asr_cfg.pack_gap_s,
            download_root=asr_cfg.download_root,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(self.name, batch, INPUT_COLUMNS)
        n = batch.num_rows
        audio = batch.column("audio").to_pylist()
        errors = batch.column("error").to_pylist()
        cols = {k: batch.column(k).to_pylist() for k in ("text", "language", "language_prob", "avg_logprob", "no_speech_prob")}
        todo = [i for i in range(n) if errors[i] is None and audio[i] is not None]
        waves = [np.frombuffer(audio[i], dtype=np.float32) for i in todo]
        t0 = time.perf_counter()
        results = self.model.transcribe_batch(waves) if todo else []
        elapsed = time.perf_counter() - t0
        # Clips share windows and batches, so the batch's time is split by audio duration.
        total = sum(len(w) for w in waves) or 1
        timing = [0.0] * n
        for i, w, res in zip(todo, waves, results):
            timing[i] = elapsed * len(w) / total
            if isinstance(res, Exception):  # per-clip failure is data; model load failures raise
                errors[i] = stage_error(self.name, res)
                continue
            cols["text"][i] = res.text
            cols["language"][i] = res.language
            cols["language_prob"][i] = res.language_prob
            cols["avg_logprob"][i] = res.avg_logprob
            cols["no_speech_prob"][i] = res.no_speech_prob
        out = batch.drop_columns(["audio"])
        out = with_columns(
            out,
            {
                "text": pa.array(cols["text"], pa.string()),
                "language": pa.array(cols["language"], pa.string()),
                "language_prob": pa.array(cols["language_prob"], pa.float32()),
                "avg_logprob": pa.array(cols["avg_logprob"], pa.float32()),
                "no_speech_prob": pa.array(cols["no_speech_prob"], pa.float32()),
                "asr_model": pa.array([self.cfg.model] * n, pa.string()),
                "asr_config_hash": pa.array([self.config_hash] * n, pa.string()),
                "error": pa.array(errors, pa.string()),
                "t_asr": pa.array(timing, pa.float64()),
            },
        )
        return check_rows(self.name, n, out)
