"""Decode stage (CPU tasks): read bytes, hash them, decode to 16 kHz mono float32.

Input columns: ``utt_id``, ``uri``, ``error``. Adds ``audio_sha256``, ``duration_s``,
``audio`` (raw float32 little-endian samples, binary; dropped after ASR),
``t_decode``. A missing, unreadable, empty or non-audio file becomes a row whose
``error`` says why; a row that already carries an error passes through untouched.
"""

from __future__ import annotations

import time

import pyarrow as pa

from labeler.stages.base import check_rows, require_columns, stage_error, with_columns

INPUT_COLUMNS = ("utt_id", "uri", "error")


class DecodeStage:
    name = "decode"

    def __init__(self, max_duration_s: float = 4 * 3600.0) -> None:
        self.max_duration_s = max_duration_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        from labeler.audio import AudioError, decode, read_bytes, sha256_hex

        require_columns(self.name, batch, INPUT_COLUMNS)
        uris = batch.column("uri").to_pylist()
        errors = batch.column("error").to_pylist()
        sha, dur, audio, timing = [], [], [], []
        for i, uri in enumerate(uris):
            t0 = time.perf_counter()
            h = d = a = None
            if errors[i] is None:
                try:
                    data = read_bytes(uri)
                    h = sha256_hex(data)  # recorded even when decoding then fails
                    decoded = decode(data)
                    d = decoded.duration_s
                    if d > self.max_duration_s:
                        raise AudioError(f"recording is {d:.0f} s long, over decode.max_duration_s={self.max_duration_s:.0f}")
                    a = decoded.waveform.tobytes()
                except Exception as exc:  # AudioError or anything else: per-file failure is data
                    errors[i] = stage_error(self.name, exc)
                    d = a = None
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
                "t_decode": pa.array(timing, pa.float64()),
            },
        )
        return check_rows(self.name, batch.num_rows, out)
