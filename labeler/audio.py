"""Reading and decoding audio: bytes from any pyarrow/fsspec URI, PyAV decode to 16 kHz mono.

PyAV (FFmpeg) decodes every container and codec lanser is asked for (wav, flac, mp3,
ogg, m4a, ...); torchaudio is deliberately not used (it breaks beside the CPU torch
build). Nothing here imports torch or a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16_000


class AudioError(Exception):
    """A per-file problem: the row gets this message in its ``error`` column."""


@dataclass(frozen=True)
class DecodedAudio:
    waveform: np.ndarray  # float32, mono, SAMPLE_RATE
    sample_rate: int  # always SAMPLE_RATE
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.sample_rate


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(uri: str) -> bytes:
    """Read a whole file from a local path or a URI pyarrow/fsspec understands.

    Raises :class:`AudioError` with a readable reason (missing, permission, ...).
    """
    from labeler.io import open_input_stream

    with read_errors(uri):
        with open_input_stream(uri) as f:
            return f.read()


@contextlib.contextmanager
def read_errors(uri: str) -> Iterator[None]:
    """Turn the OS errors of opening or reading ``uri`` into :class:`AudioError` with a
    readable reason (missing, a directory, permission, other)."""
    try:
        yield
    except FileNotFoundError:
        raise AudioError(f"file not found: {uri}") from None
    except IsADirectoryError:
        raise AudioError(f"is a directory, not an audio file: {uri}") from None
    except PermissionError:
        raise AudioError(f"permission denied: {uri}") from None
    except OSError as exc:
        raise AudioError(f"cannot read {uri}: {exc}") from None


def decode(data: bytes, sample_rate: int = SAMPLE_RATE) -> DecodedAudio:
    """Decode encoded audio bytes to float32 mono at ``sample_rate``.

    Raises :class:`AudioError` for empty input, non-audio data, or a stream with
    no samples.
    """
    import av  # PyAV; imported here so `import labeler` stays light

    if not data:
        raise AudioError("empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError) as exc:
        raise AudioError(f"not a readable audio file ({_ffmpeg_reason(exc)})") from None
    try:
        streams = container.streams.audio
        if not streams:
            raise AudioError("no audio stream in file")
        stream = streams[0]
        src_rate = int(stream.codec_context.sample_rate or 0)
        src_channels = int(stream.codec_context.channels or 0)
        resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler keep its own clock
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioError(f"corrupt audio stream ({_ffmpeg_reason(exc)})") from None
    finally:
        container.close()
    if not chunks:
        raise AudioError("audio stream holds no samples")
    pcm = np.concatenate(chunks)
    if pcm.size == 0:
        raise AudioError("audio stream holds no samples")
    waveform = (pcm.astype(np.float32) / 32768.0).astype(np.float32, copy=False)
    return DecodedAudio(waveform, sample_rate, src_rate or sample_rate, src_channels or 1)


def load(uri: str, sample_rate: int = SAMPLE_RATE) -> tuple[DecodedAudio, str]:
    """Read and decode ``uri``; returns the audio and the sha256 of its bytes."""
    data = read_bytes(uri)
    return decode(data, sample_rate), sha256_hex(data)


def _ffmpeg_reason(exc: Exception) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return msg.strip() or type(exc).__name__
