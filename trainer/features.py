"""Log-mel features in numpy (no torchaudio or librosa), and the Ray Data batch function that
decodes clips by URI and turns them into fixed-size training inputs.

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

    @property
    def n_fft(self) -> int:
        return int(round(SAMPLE_RATE * self.win_ms / 1000))

    @property
    def hop(self) -> int:
        return int(round(SAMPLE_RATE * self.hop_ms / 1000))

    @property
    def max_frames(self) -> int:
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


def resolve_uri(uri: str, base_dir: str | None) -> str:
    """A relative local path is taken relative to ``base_dir`` (the directory the job was
    launched from): Ray workers run in their own working directories."""
    from labeler.io import is_local, local_path

    if base_dir and is_local(uri) and not os.path.isabs(local_path(uri)):
        return os.path.join(base_dir, local_path(uri))
    return uri


def featurize_batch(
    batch: dict[str, np.ndarray],
    *,
    spec: dict,
    num_classes: int,
    crop: str = "start",
    base_dir: str | None = None,
    keep_ids: bool = False,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: ``uri`` (+ ``label_index``, optional ``scores``)
    -> fixed-size log-mel ``features`` and training targets.

    One output row per input row. A clip that cannot be read or decoded keeps its row
    with ``ok = False`` and zero features, so the training loop counts it and leaves it
    out of the loss and of every metric: a broken file never gets a label silently.

    Output columns: ``features`` (float32, ``n_mels x max_frames``), ``n_frames``,
    ``label`` (int64, -1 when unknown), ``target`` (float32 distribution over
    ``num_classes``: the stored ``scores`` when present, else one-hot), ``ok``; with
    ``keep_ids`` also ``utt_id``.
    """
    from labeler.audio import AudioError, load

    fspec = FeatureSpec(**spec)
    uris = batch["uri"]
    n = len(uris)
    labels = np.asarray(batch["label_index"], dtype=np.int64) if "label_index" in batch else np.full(n, -1, np.int64)
    scores = batch.get("scores")
    feats = np.zeros((n, fspec.n_mels, fspec.max_frames), dtype=np.float32)
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
            audio, _ = load(resolve_uri(str(uris[i]), base_dir))
        except AudioError:
            continue
        feats[i], n_frames[i] = fit_frames(log_mel(audio.waveform, fspec), fspec.max_frames, crop, rng)
        ok[i] = True
    out = {"features": feats, "n_frames": n_frames, "label": labels, "target": target, "ok": ok}
    if keep_ids:
        out["utt_id"] = np.asarray(batch["utt_id"], dtype=object)
    return out
