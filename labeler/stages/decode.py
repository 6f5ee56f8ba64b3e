"""Decode stage (CPU tasks): read bytes, hash them, decode to 16 kHz mono float32.

Input columns: ``utt_id``, ``uri``, ``error``. Adds ``audio_sha256``, ``duration_s``,
``audio`` (raw float32 little-endian samples, binary; dropped after ASR),
``asr_cached`` and the transcript columns (filled from the transcript cache when this
audio was already transcribed with the same ASR settings: then it is not decoded at all),
``t_decode``. A missing, unreadable, empty or non-audio file becomes a row whose
``error`` says why; a row that already carries an error passes through untouched.
"""

from __future__ import annotations

import time

import pyarrow as pa

from labeler.stages.base import check_rows, require_columns, resolve_ref, stage_error, with_columns

INPUT_COLUMNS = ("utt_id", "uri", "error")
TRANSCRIPT_FIELDS = ("text", "language", "language_prob", "avg_logprob", "no_speech_prob")


class _Cached(Exception):
    """Control flow: the transcript came from the cache, skip decoding."""


class DecodeStage:
    name = "decode"

    def __init__(self, max_duration_s: float = 4 * 3600.0, transcript_cache=None) -> None:
        self.max_duration_s = max_duration_s
        self.cache = resolve_ref(transcript_cache)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from labeler.audio import AudioError, decode, read_bytes, sha256_hex

        require_columns(self.name, batch, INPUT_COLUMNS)
        uris = batch.column("uri").to_pylist()
        errors = batch.column("error").to_pylist()
        sha, dur, audio, timing, cached = [], [], [], [], []
        tcols = {c: [None] * batch.num_rows for c in TRANSCRIPT_FIELDS}
        for i, uri in enumerate(uris):
            t0 = time.perf_counter()
            h = d = a = None
            hit = None
            if errors[i] is None:
                try:
                    data = read_bytes(uri)
                    h = sha256_hex(data)  # recorded even when decoding then fails
                    hit = self.cache.get(h) if self.cache is not None and len(self.cache) else None
                    if hit is not None:
                        d = hit["duration_s"]
                        for c in TRANSCRIPT_FIELDS:
                            tcols[c][i] = hit[c]
                        raise _Cached
                    decoded = decode(data)
                    d = decoded.duration_s
                    if d > self.max_duration_s:
                        raise AudioError(f"recording is {d:.0f} s long, over decode.max_duration_s={self.max_duration_s:.0f}")
                    a = decoded.waveform.tobytes()
                except _Cached:
                    pass
                except Exception as exc:  # AudioError or anything else: per-file failure is data
                    errors[i] = stage_error(self.name, exc)
                    d = a = None
            cached.append(hit is not None)
            sha.append(h)
            dur.append(d)
            audio.append(a)
            timing.append(time.perf_counter() - t0)
        out = with_columns(
            batch,
            {
                "audio_sha256": pa.array(sha, pa.string()),
                "duration_s": pa.array(dur, pa.float64()),
                "audio": pa.array(audio, pa.large_binary()),
                "error": pa.array(errors, pa.string()),
                "asr_cached": pa.array(cached, pa.bool_()),
                "text": pa.array(tcols["text"], pa.string()),
                "language": pa.array(tcols["language"], pa.string()),
                "language_prob": pa.array(tcols["language_prob"], pa.float32()),
                "avg_logprob": pa.array(tcols["avg_logprob"], pa.float32()),
                "no_speech_prob": pa.array(tcols["no_speech_prob"], pa.float32()),
                "t_decode": pa.array(timing, pa.float64()),
            },
        )
        return check_rows(self.name, batch.num_rows, out)
