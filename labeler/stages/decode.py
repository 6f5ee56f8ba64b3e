"""Decode: read each file, hash its bytes, decode it to 16 kHz mono float32.

Audio already transcribed with the same ASR settings (found by its sha256 in the transcript
cache) is not decoded: its row gets the stored transcript and no ``audio``, so ASR passes
it by. A missing, unreadable, empty, too long or non-audio file becomes a row whose
``error`` says why; a row that already carries an error passes through untouched.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from labeler import schema as S
from labeler.config import LabelConfig
from labeler.stages.base import Stage, StageContext, columns, fetch, stage_error


class DecodeStage(Stage):
    name = "decode"
    reads = ("uri", "error")
    writes = ("audio_sha256", "duration_s", "audio", "error", *S.TRANSCRIPT_COLUMNS)

    def __init__(self, cfg: LabelConfig, ctx: StageContext) -> None:
        super().__init__(cfg, ctx)
        self.max_duration_s = cfg.decode.max_duration_s
        cache = fetch(ctx.transcript_cache) if cfg.cache.transcripts else None
        self.cache = cache if cache is not None and len(cache) else None

    @classmethod
    def resources(cls, cfg: LabelConfig) -> dict[str, Any]:
        d = cfg.decode
        return {"num_cpus": d.num_cpus, "concurrency": d.concurrency, "batch_size": d.rows_per_block}

    def process(self, batch: pa.Table) -> pa.Table:
        from labeler.audio import AudioError, decode, read_bytes, sha256_hex

        errors = batch.column("error").to_pylist()
        out: dict[str, list] = {c: [None] * batch.num_rows for c in self.writes}
        out["error"] = errors
        for i, uri in enumerate(batch.column("uri").to_pylist()):
            if errors[i] is not None:
                continue
            try:
                data = read_bytes(uri)
                out["audio_sha256"][i] = sha = sha256_hex(data)  # kept even when decoding then fails
                self.count(audio_files_read=1)
                hit = self.cache.get(sha) if self.cache is not None else None
                if hit is not None:
                    out["duration_s"][i] = hit["duration_s"]
                    for c in S.TRANSCRIPT_COLUMNS:
                        out[c][i] = hit[c]
                    self.count(transcripts_from_cache=1)
                    continue
                audio = decode(data)
                if audio.duration_s > self.max_duration_s:
                    raise AudioError(f"recording is {audio.duration_s:.0f} s long, over decode.max_duration_s={self.max_duration_s:.0f}")
                out["duration_s"][i] = audio.duration_s
                out["audio"][i] = audio.waveform.tobytes()
            except Exception as exc:  # AudioError or anything else: a per-file failure is data
                errors[i] = stage_error(self.name, exc)
        return columns(out)
