"""Log-mel features in numpy (no torchaudio or librosa), and the Ray Data batch function that
decodes utterances by URI (a whole file, or a span of a longer recording cut by seeking:
:func:`load_span`) and turns them into fixed-size training inputs: log-mel frames for the
ResNet, or the 16 kHz waveform itself (one channel, one "frame" per sample) for a pretrained
speech encoder (``FeatureSpec(kind="waveform")``), cropped, cached and padded the same way.

    >>> import numpy as np
    >>> from trainer.features import FeatureSpec, log_mel
    >>> spec = FeatureSpec(n_mels=40)
    >>> log_mel(np.zeros(16000, np.float32), spec).shape
    (40, 101)
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass

import numpy as np

from labeler.audio import SAMPLE_RATE  # training sees the 16 kHz mono waveform the labeler saw
from trainer.errors import DataError

#: Added to mel energies before the log, so silence is finite.
LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that changes the features; saved in every checkpoint so evaluation
    featurizes exactly as training did."""

    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 20.0
    fmax: float | None = None
    max_seconds: float = 6.0
    normalize: str = "utterance_mean"  # or "none"
    #: "log_mel" (the ResNet's input), or "waveform": the raw 16 kHz samples as one channel,
    #: what a pretrained speech encoder reads (its own convolutions make the frames; the
    #: mel settings above are then unused). Checkpoints written before this field are log-mel.
    kind: str = "log_mel"

    @property
    def channels(self) -> int:
        """Rows of one clip's feature array: ``n_mels``, or 1 for the waveform."""
        return 1 if self.kind == "waveform" else self.n_mels

    @property
    def n_fft(self) -> int:
        return int(round(SAMPLE_RATE * self.win_ms / 1000))

    @property
    def hop(self) -> int:
        return int(round(SAMPLE_RATE * self.hop_ms / 1000))

    @property
    def max_frames(self) -> int:
        """Frames of a crop: log-mel frames, or samples for the waveform."""
        if self.kind == "waveform":
            return int(self.max_seconds * SAMPLE_RATE)
        return int(self.max_seconds * SAMPLE_RATE) // self.hop + 1

    def to_dict(self) -> dict:
        return asdict(self)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular mel filters, shape ``(n_mels, n_fft // 2 + 1)``, float32."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (center - lower)
    down = (upper - freqs[None, :]) / (upper - center)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (upper - lower))  # Slaney: equal area per filter
    return fb.astype(np.float32)


def log_mel(waveform: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """``(n_mels, frames)`` float32 log-mel energies of a 16 kHz mono waveform: numpy
    ``rfft`` over periodic-Hann frames, HTK-mel triangular filters with Slaney area
    normalisation, then the log.

    Frames are centred (the signal is reflect-padded by half a window), so a clip of
    ``n`` samples gives ``1 + n // hop`` frames.
    """
    x = np.asarray(waveform, dtype=np.float32).reshape(-1)
    n_fft, hop = spec.n_fft, spec.hop
    pad = n_fft // 2
    x = np.pad(x, pad, mode="reflect" if x.size > pad else "constant")
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    fb = mel_filterbank(spec.n_mels, n_fft, float(spec.fmin), float(spec.fmax or SAMPLE_RATE / 2))
    mel = fb @ power.T.astype(np.float32)
    out = np.log(mel + LOG_FLOOR).astype(np.float32)
    if spec.normalize == "utterance_mean":
        out -= out.mean(axis=1, keepdims=True)
    return out


def clip_features(waveform: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """``(channels, frames)`` float32 features of one clip: :func:`log_mel`, or for
    ``kind="waveform"`` the samples as they are, as one row (a pretrained encoder normalises
    its input itself, over the real samples of its crop: see :mod:`trainer.encoders`)."""
    if spec.kind == "waveform":
        return np.asarray(waveform, dtype=np.float32).reshape(1, -1)
    return log_mel(waveform, spec)


def fit_frames(feats: np.ndarray, max_frames: int, crop: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Crop (``random`` or ``start``) or zero-pad ``feats`` to ``max_frames`` frames.

    Returns the fixed-size array and the number of real frames in it (the model masks
    the rest out of its pooling).
    """
    n = feats.shape[1]
    if n >= max_frames:
        start = int(rng.integers(0, n - max_frames + 1)) if crop == "random" else 0
        return feats[:, start : start + max_frames], max_frames
    out = np.zeros((feats.shape[0], max_frames), dtype=np.float32)
    out[:, :n] = feats
    return out, n


def crop_batch(features, max_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size crops of a batch of whole-clip features (``crop: none`` rows of
    :func:`featurize_batch`, an object array of ``(n_mels, frames)`` arrays): a random
    window of ``max_frames`` frames from each (:func:`fit_frames` with ``crop="random"``),
    so every epoch sees new windows of the cached clips. Returns ``(features, n_frames)``."""
    n = len(features)
    if n == 0:
        return np.zeros((0, 0, max_frames), np.float32), np.zeros(0, np.int32)
    n_mels = int(np.shape(features[0])[0])
    out = np.zeros((n, n_mels, max_frames), dtype=np.float32)
    n_frames = np.zeros(n, dtype=np.int32)
    for i, feats in enumerate(features):
        out[i], n_frames[i] = fit_frames(np.asarray(feats, dtype=np.float32), max_frames, "random", rng)
    return out, n_frames


def crop_collate(max_frames: int):
    """``iter_torch_batches`` collate function (a Ray ``NumpyBatchCollateFn``) for cached
    whole-clip features: a fresh random crop of every clip (:func:`crop_batch`), then
    tensors. Ray calls it in its prefetch threads, so cropping overlaps the training step;
    each call draws from its own generator (fresh OS entropy), as :func:`featurize_batch`
    does."""
    import torch
    from ray.data.collate_fn import NumpyBatchCollateFn

    class CropCollate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]):
            feats, n_frames = crop_batch(batch["features"], max_frames, np.random.default_rng())
            out = {"features": torch.from_numpy(feats), "n_frames": torch.from_numpy(n_frames)}
            for key in ("label", "target", "ok"):
                out[key] = torch.tensor(batch[key])  # a copy: Ray's arrays are read-only
            return out

    return CropCollate()


def resolve_uri(uri: str, base_dir: str | None) -> str:
    """A relative local path is taken relative to ``base_dir`` (the directory the job was
    launched from): Ray workers run in their own working directories."""
    from labeler.io import is_local, local_path

    if base_dir and is_local(uri) and not os.path.isabs(local_path(uri)):
        return os.path.join(base_dir, local_path(uri))
    return uri


# --------------------------------------------------------------------------- utterance spans

#: Codecs whose packets decode independently (no state from one packet to the next): after a
#: seek their first packet already decodes to the samples a decode from the start gives.
_LOSSLESS_CODECS = frozenset({"flac", "alac", "wavpack", "tta", "ape", "shorten", "mlp", "truehd", "wmalossless"})

#: Seconds decoded and thrown away before an utterance after a seek, for codecs with state
#: (MDCT overlap, the MP3 bit reservoir, Opus' filters): enough packets that their output
#: is that of a decode from the start, bit for bit (MP3, Opus and AAC without noise
#: substitution, in tests/trainer/test_trainer_spans.py). AAC with perceptual noise
#: substitution stays slightly off: its noise generator's state depends on everything
#: decoded before.
SEEK_PREROLL_S = 0.5

#: 16 kHz output samples recomputed before an utterance's first sample: the resampler's
#: filter (a few dozen taps) then sees the same input as in a decode from the start, so the
#: utterance's samples match it exactly.
RESAMPLER_MARGIN = 480

#: Seeks tried, each further back, before a seek that keeps landing after its target gives
#: way to decoding the whole file.
_SEEK_TRIES = 3


class _SeekFailed(Exception):
    """Seeking cannot give exact samples here (no timestamps, a gap, a seek that lands late):
    decode from the start instead."""


def span_samples(start_s: float | None, end_s: float | None) -> tuple[int, int | None]:
    """``[round(start_s * 16000), round(end_s * 16000))``: an utterance's samples in the
    16 kHz decode of its source file (start ``None`` = 0, end ``None`` = the end of the file)."""
    first = 0 if start_s is None else max(0, int(round(float(start_s) * SAMPLE_RATE)))
    last = None if end_s is None else max(first, int(round(float(end_s) * SAMPLE_RATE)))
    return first, last


def _open_input_file(uri: str):
    """What PyAV opens for ``uri``, as a context manager: a local path (FFmpeg reads it
    itself), else a seekable pyarrow file of any pyarrow/fsspec filesystem. Either way only
    the bytes a seek needs are read. Errors read as :func:`labeler.audio.read_bytes` words them."""
    import contextlib

    from labeler.audio import read_errors
    from labeler.io import filesystem, is_local, local_path

    with read_errors(uri):
        if is_local(uri):
            path = local_path(uri)
            with open(path, "rb"):  # the errors read_bytes gives (missing, a directory, permissions)
                pass
            return contextlib.nullcontext(path)
        fs, path = filesystem(uri)
        return fs.open_input_file(path)


def _tail(frame, skip: int):
    """``frame`` without its first ``skip`` samples, as a new frame of the same format."""
    import av

    data = frame.to_ndarray()
    if frame.format.is_planar:
        data = data[:, skip:]
    else:
        data = data[:, skip * frame.layout.nb_channels :]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    out.time_base = frame.time_base
    return out


def _seek_span(f, first: int, last: int | None, sample_rate: int) -> np.ndarray:
    """Samples ``[first, last)`` of the ``sample_rate`` mono decode of ``f`` (a local path
    or an open seekable file),
    equal to ``labeler.audio.decode(whole file).waveform[first:last]``, by seeking.

    A decode from the start resamples every decoded sample, so its output sample ``k`` is
    computed at input sample ``k * in_rate / sample_rate``. Here the resampler starts at
    input sample ``p0 = q0 * in_rate / sample_rate``, where ``q0`` is a multiple of
    ``sample_rate / gcd(in_rate, sample_rate)`` at least :data:`RESAMPLER_MARGIN` before
    ``first``: its output sample ``j`` is then the decode's sample ``q0 + j`` (same phase),
    and the margin gives the filter the same history before ``first``. Input samples are
    counted from the first sample a decode from the start gives, by frame timestamps; the
    container seeks to :data:`SEEK_PREROLL_S` before ``p0`` (none for lossless codecs) and
    frames before ``p0`` are decoded and dropped. Raises :class:`_SeekFailed` where
    timestamps cannot place samples exactly.
    """
    import fractions
    import itertools
    import math

    import av
    from av.audio.resampler import AudioResampler

    from labeler.audio import AudioError, _ffmpeg_reason

    try:
        container = av.open(f, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError) as exc:
        raise AudioError(f"not a readable audio file ({_ffmpeg_reason(exc)})") from None
    try:
        if not container.streams.audio:
            raise AudioError("no audio stream in file")
        stream = container.streams.audio[0]
        in_rate = int(stream.codec_context.sample_rate or 0)
        tb = stream.time_base
        if in_rate <= 0 or tb is None:
            raise _SeekFailed("no sample rate or time base")
        g = math.gcd(in_rate, sample_rate)
        step_out, step_in = sample_rate // g, in_rate // g
        q0 = max(0, first - RESAMPLER_MARGIN) // step_out * step_out
        p0 = q0 // step_out * step_in
        preroll = 0 if stream.codec_context.name.startswith("pcm_") or stream.codec_context.name in _LOSSLESS_CODECS else int(SEEK_PREROLL_S * in_rate)
        try:
            frames = container.decode(stream)
            head = next(frames, None)
            if head is None:
                raise AudioError("audio stream holds no samples")
            origin = head.pts  # sample 0 of a decode from the start
            if origin is None:
                raise _SeekFailed("no timestamps")
            ticks = fractions.Fraction(tb) * in_rate  # input samples per time-base tick

            def position(frame) -> int:
                if frame.pts is None:
                    raise _SeekFailed("no timestamps")
                pos = (frame.pts - origin) * ticks
                if pos.denominator != 1:
                    raise _SeekFailed("timestamps between samples")
                return int(pos)

            pending = [head]
            target = p0 - preroll  # where decoding starts: frames before p0 are decoded and dropped
            if target > head.samples:  # else the span starts near the top: decode on, no seek
                for attempt in range(_SEEK_TRIES):
                    container.seek(origin + math.floor(target / ticks), stream=stream, backward=True)
                    frames = container.decode(stream)
                    probe = next(frames, None)
                    if probe is not None and position(probe) <= target:
                        pending = [probe]
                        break
                    target = max(0, target - max(preroll, in_rate // 2) * 4**attempt)  # landed late: earlier
                else:
                    raise _SeekFailed("seeking lands after its target")
            resampler = AudioResampler(format="s16", layout="mono", rate=sample_rate)
            want = None if last is None else last - q0  # output samples needed from q0
            chunks: list[np.ndarray] = []
            have = 0
            expect = None
            done = False
            for frame in itertools.chain(pending, frames):
                pos = position(frame)
                if expect is not None and pos != expect:
                    raise _SeekFailed("a gap or an overlap in the timestamps")
                expect = pos + frame.samples
                if expect <= p0:
                    continue
                if pos < p0:
                    frame = _tail(frame, p0 - pos)
                frame.pts = None  # as labeler.audio.decode: the resampler keeps its own clock
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    have += chunk.size
                if want is not None and have >= want:
                    done = True
                    break
            if not done:
                for out in resampler.resample(None):  # the end of the file: flush, as a whole decode does
                    chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioError(f"corrupt audio stream ({_ffmpeg_reason(exc)})") from None
    finally:
        container.close()
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    pcm = pcm[first - q0 : None if last is None else last - q0]
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def load_span(uri: str, start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
    """16 kHz mono float32 samples of an utterance: ``[round(start_s * 16000),
    round(end_s * 16000))`` of the decode of its source file (``labeler.audio.decode``,
    which the labeler saw), read by seeking (:func:`_seek_span`). Without a span it is
    the whole file, as :func:`labeler.audio.load` reads it. Raises
    :class:`labeler.audio.AudioError` for a file that cannot be read or decoded.
    """
    from labeler.audio import AudioError, decode, load, read_bytes

    if start_s is None and end_s is None:
        return load(uri)[0].waveform
    first, last = span_samples(start_s, end_s)
    try:
        with _open_input_file(uri) as f:
            waveform = _seek_span(f, first, last, SAMPLE_RATE)
    except _SeekFailed:
        waveform = decode(read_bytes(uri)).waveform[first:last]
    if waveform.size == 0:
        raise AudioError(f"the utterance [{start_s}, {end_s}] s holds no samples of {uri}")
    return waveform


def _seconds(column, i: int) -> float | None:
    """Row ``i`` of an optional seconds column; None when the column is absent or the value
    null (Ray gives a float column's nulls as NaN)."""
    if column is None:
        return None
    value = column[i]
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def featurize_batch(
    batch: dict[str, np.ndarray],
    *,
    spec: dict,
    num_classes: int,
    crop: str = "start",
    base_dir: str | None = None,
    keep_ids: bool = False,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: ``uri`` (+ ``label_index``, optional ``scores``,
    optional ``start_s`` / ``end_s``) -> fixed-size ``features`` (log-mel, or the waveform for
    ``kind="waveform"``: :func:`clip_features`) and training targets.

    A row with a span (``start_s``, ``end_s``: an utterance of a longer recording) is cut
    from its source file by seeking (:func:`load_span`); a row without one (null or no such
    columns: a corpus file, a labels table written before utterances had spans) is its
    whole file. Features are computed over the utterance and ``crop`` then takes its frames
    from them, so a crop never leaves the utterance. ``crop="none"`` keeps the whole
    utterance's features instead (a cache that :class:`CropCollate` crops afresh every
    epoch): ``features`` is then an object array of ``(n_mels, frames)`` arrays, and
    ``n_frames`` their lengths.

    One output row per input row. A clip that cannot be read or decoded keeps its row
    with ``ok = False`` and zero features, so the training loop counts it and leaves it
    out of the loss and of every metric: a broken file never gets a label silently.

    Output columns: ``features`` (float32, ``channels x max_frames``), ``n_frames``,
    ``label`` (int64, -1 when unknown), ``target`` (float32 distribution over
    ``num_classes``: the stored ``scores`` when present, else one-hot), ``ok``; with
    ``keep_ids`` also ``utt_id``.
    """
    from labeler.audio import AudioError

    fspec = FeatureSpec(**spec)
    uris = batch["uri"]
    n = len(uris)
    starts, ends = batch.get("start_s"), batch.get("end_s")
    labels = np.asarray(batch["label_index"], dtype=np.int64) if "label_index" in batch else np.full(n, -1, np.int64)
    scores = batch.get("scores")
    whole = crop == "none"
    if whole:
        feats = np.empty(n, dtype=object)
        for i in range(n):
            feats[i] = np.zeros((fspec.channels, 0), np.float32)  # an unreadable clip: no frames
    else:
        feats = np.zeros((n, fspec.channels, fspec.max_frames), dtype=np.float32)
    n_frames = np.zeros(n, dtype=np.int32)
    target = np.zeros((n, num_classes), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    rng = np.random.default_rng()
    for i in range(n):
        label = int(labels[i])
        if label >= num_classes:
            raise DataError(
                f"label_index {label} is out of range for a taxonomy with {num_classes} labels "
                f"(row uri={uris[i]!r}): the table was labeled with a different taxonomy version"
            )
        row_scores = None if scores is None else scores[i]
        if row_scores is not None and len(row_scores) == num_classes:
            target[i] = np.asarray(row_scores, dtype=np.float32)
        elif row_scores is not None:
            raise DataError(
                f"scores has {len(row_scores)} values but the taxonomy has {num_classes} labels "
                f"(row uri={uris[i]!r}): the table was labeled with a different taxonomy version"
            )
        elif label >= 0:
            target[i, label] = 1.0
        try:
            waveform = load_span(resolve_uri(str(uris[i]), base_dir), _seconds(starts, i), _seconds(ends, i))
        except AudioError:
            continue
        mel = clip_features(waveform, fspec)
        if whole:
            feats[i], n_frames[i] = mel, mel.shape[1]
        else:
            feats[i], n_frames[i] = fit_frames(mel, fspec.max_frames, crop, rng)
        ok[i] = True
    out = {"features": feats, "n_frames": n_frames, "label": labels, "target": target, "ok": ok}
    if keep_ids:
        out["utt_id"] = np.asarray(batch["utt_id"], dtype=object)
    return out
