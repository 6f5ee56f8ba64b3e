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
from typing import Iterable, Iterator, Sequence

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
    if not data:
        raise AudioError("empty file (0 bytes)")
    stream = PcmStream(data, sample_rate=sample_rate)
    blocks = list(stream)
    waveform = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return DecodedAudio(waveform, sample_rate, stream.source_sample_rate, stream.source_channels)


class PcmStream:
    """A file's audio as float32 mono blocks of about ``block_s`` seconds at ``sample_rate``,
    decoded as they are read, so a recording of any length is never held whole.

    ``source`` is the encoded bytes, or a URI (a local path is opened by FFmpeg itself, any
    other URI through pyarrow/fsspec as a seekable file). Iterating twice decodes twice; the
    same source always gives the same samples (the whole-file :func:`decode` is this stream
    joined). Raises :class:`AudioError` as :func:`decode` does, at the point it finds out.
    """

    def __init__(self, source, block_s: float = 30.0, sample_rate: int = SAMPLE_RATE) -> None:
        self.source = source
        self.block = max(1, int(block_s * sample_rate))
        self.sample_rate = sample_rate
        self.source_sample_rate = sample_rate
        self.source_channels = 1

    def __iter__(self) -> Iterator[np.ndarray]:
        import av  # PyAV; imported here so `import labeler` stays light

        with contextlib.ExitStack() as stack:
            if isinstance(self.source, (bytes, bytearray, memoryview)):
                handle = io.BytesIO(self.source)
            else:
                from labeler.io import filesystem, is_local, local_path

                with read_errors(self.source):
                    if is_local(self.source):
                        handle = stack.enter_context(open(local_path(self.source), "rb"))
                    else:
                        fs, path = filesystem(self.source)
                        handle = stack.enter_context(fs.open_input_file(path))
            try:
                container = av.open(handle, mode="r", metadata_errors="ignore")
            except (av.error.FFmpegError, ValueError) as exc:
                raise AudioError(f"not a readable audio file ({_ffmpeg_reason(exc)})") from None
            stack.callback(container.close)
            streams = container.streams.audio
            if not streams:
                raise AudioError("no audio stream in file")
            stream = streams[0]
            self.source_sample_rate = int(stream.codec_context.sample_rate or 0) or self.sample_rate
            self.source_channels = int(stream.codec_context.channels or 0) or 1
            resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
            pending: list[np.ndarray] = []
            held = total = 0
            try:
                for frame in container.decode(stream):
                    frame.pts = None  # let the resampler keep its own clock
                    for out in resampler.resample(frame):
                        pending.append(out.to_ndarray().reshape(-1))
                        held += pending[-1].size
                    if held >= self.block:
                        total += held
                        yield _float32(pending)
                        pending, held = [], 0
                for out in resampler.resample(None):  # flush
                    pending.append(out.to_ndarray().reshape(-1))
                    held += pending[-1].size
            except (av.error.FFmpegError, ValueError) as exc:
                raise AudioError(f"corrupt audio stream ({_ffmpeg_reason(exc)})") from None
            total += held
            if total == 0:
                raise AudioError("audio stream holds no samples")
            if held:
                yield _float32(pending)


def _float32(pcm: list[np.ndarray]) -> np.ndarray:
    x = np.concatenate(pcm) if len(pcm) > 1 else pcm[0]
    return (x.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def read_or_hash(uri: str, keep_max_bytes: int, block_bytes: int = 8 << 20) -> tuple[str, bytes | None]:
    """(sha256 of the file's bytes, the bytes themselves or None): one streaming read; the
    bytes are kept only when the file is at most ``keep_max_bytes`` long, so a large file
    is hashed without being held (and is then decoded from its URI, :class:`PcmStream`)."""
    from labeler.io import open_input_stream

    h = hashlib.sha256()
    kept: list[bytes] | None = []
    size = 0
    with read_errors(uri):
        with open_input_stream(uri) as f:
            while True:
                chunk = f.read(block_bytes)
                if not chunk:
                    break
                h.update(chunk)
                size += len(chunk)
                if kept is not None:
                    kept.append(chunk)
                    if size > keep_max_bytes:
                        kept = None
    return h.hexdigest(), (b"".join(kept) if kept is not None else None)


def load(uri: str, sample_rate: int = SAMPLE_RATE) -> tuple[DecodedAudio, str]:
    """Read and decode ``uri``; returns the audio and the sha256 of its bytes."""
    data = read_bytes(uri)
    return decode(data, sample_rate), sha256_hex(data)


def _ffmpeg_reason(exc: Exception) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return msg.strip() or type(exc).__name__


def spans_of_stream(blocks: Iterable[np.ndarray], spans: Sequence[tuple[float, float]], group_s: float,
                    sample_rate: int = SAMPLE_RATE) -> Iterator[list[tuple[int, np.ndarray]]]:
    """The samples of ``spans`` (seconds, in order, not overlapping) cut from a stream of
    blocks (:class:`PcmStream`), in groups of at most ``group_s`` seconds of audio (a longer
    span alone): lists of (span index, waveform). Only the current group is held; the cut is
    the one a whole waveform gives (``x[round(s * sr):round(e * sr)]``). A span past the
    stream's end comes out short (or empty)."""
    bounds = [(int(round(s * sample_rate)), int(round(e * sample_rate))) for s, e in spans]
    limit = int(group_s * sample_rate)
    group: list[tuple[int, np.ndarray]] = []
    held = pos = k = 0
    parts: list[np.ndarray] = []

    def close(k: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        nonlocal group, held, parts
        wave = np.concatenate(parts) if len(parts) != 1 else parts[0].copy()  # its own memory, not a view of a block
        parts = []
        if group and held + wave.size > limit:
            yield group
            group, held = [], 0
        group.append((k, wave.astype(np.float32, copy=False)))
        held += wave.size

    for block in blocks:
        end = pos + block.size
        while k < len(bounds) and bounds[k][0] < end:
            s, e = bounds[k]
            lo, hi = max(s, pos), min(e, end)
            if hi > lo:
                parts.append(block[lo - pos:hi - pos])
            if e > end:
                break  # the span goes on in the next block
            yield from close(k)
            k += 1
        pos = end
    while k < len(bounds):
        if not parts:
            parts.append(np.zeros(0, np.float32))
        yield from close(k)
        k += 1
    if group:
        yield group


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
    """``items``, produced by a background thread up to ``depth`` ahead, so reading and
    decoding the next window overlaps the work on this one (FFmpeg and CTranslate2 both
    release the GIL). An exception in the producer is raised here; leaving early stops it."""
    import queue
    import threading

    q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="lanser-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
