"""Utterances from a long recording's word stream (pure logic, no model).

A long recording reaches ASR as its speech regions (Silero VAD, :func:`speech_regions`);
each region is transcribed with word timestamps, and :func:`build_utterances` rebuilds
utterances from the words of the whole recording, in source time:

1. each word's duration is capped (``max_word_s``: alignment stretches a word's end into
   the silence after it);
2. a pause of ``split_gap_s`` or more always ends an utterance;
3. a sentence end (``. ! ?``) ends one once it is ``target_min_s`` long; past
   ``target_max_s`` a clause end (``, ; :``) or a 0.3-s pause does;
4. a piece longer than ``max_s`` is split at its largest pause, until none is;
5. a piece shorter than ``min_s`` joins the neighbour across the smaller pause (when the
   pause is at most ``merge_gap_s`` and the result at most ``max_s``);
6. each utterance gets ``pad_s`` of padding, never past the midpoint to a neighbour or the
   recording's ends;
7. junk is dropped, and counted by reason (:data:`DROP_REASONS`): too short, too few words,
   Whisper's no-speech rule, repetitive text (compression ratio, repeated n-grams), an
   implausible speaking rate, and stock phrases Whisper produces on silence and music.

Settings and their reasons: :class:`labeler.config.SegmentConfig`.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labeler.config import SegmentConfig

DROP_REASONS = ("too_short", "too_few_words", "no_speech", "compression_ratio", "repetition", "implausible_rate", "stock_phrase")

_SENTENCE_END = re.compile(r"[.!?。！？]['\")\]]*$")
_CLAUSE_END = re.compile(r"[,;:、，]['\")\]]*$")
_SOFT_GAP_S = 0.3


@dataclass(frozen=True)
class Word:
    start: float  # seconds in the source
    end: float
    text: str  # as Whisper gives it (leading space included)
    prob: float  # Whisper's word probability
    no_speech_prob: float = 0.0  # of the decode window the word came from


@dataclass(frozen=True)
class Utterance:
    start: float  # seconds in the source, padding included
    end: float
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.words).strip()

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def avg_logprob(self) -> float:
        return float(np.mean([math.log(max(w.prob, 1e-10)) for w in self.words]))

    @property
    def no_speech_prob(self) -> float:
        return float(np.mean([w.no_speech_prob for w in self.words]))


def speech_regions(waveform: np.ndarray, cfg: SegmentConfig, sample_rate: int = 16_000) -> list[tuple[float, float]]:
    """Speech regions of a recording, (start_s, end_s), by faster-whisper's Silero VAD.

    Every VAD option is passed in one :class:`VadOptions` (a ``vad_parameters`` dict given to
    ``transcribe`` resets the options it leaves out to faster-whisper's defaults)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    opts = VadOptions(
        threshold=cfg.vad_threshold,
        min_silence_duration_ms=cfg.vad_min_silence_ms,
        speech_pad_ms=cfg.vad_speech_pad_ms,
        max_speech_duration_s=cfg.max_region_s,
        min_speech_duration_ms=250,
    )
    out = []
    for ts in get_speech_timestamps(waveform, vad_options=opts, sampling_rate=sample_rate):
        s, e = ts["start"] / sample_rate, min(ts["end"], len(waveform)) / sample_rate
        if e > s:
            out.append((s, min(e, s + cfg.max_region_s)))
    return out


class WindowedVAD:
    """:func:`speech_regions` over a recording fed in blocks, holding at most about
    ``cfg.vad_window_s`` of it: each full window is cut at a pause (the speech region that
    crosses its last ``_CARRY_S`` seconds starts the next window), so no region is split by
    a window's edge. A recording no longer than one window gets exactly the regions of
    :func:`speech_regions` on the whole of it. VAD runs only on full windows and at
    :meth:`finish`, so a clip that turns out too short to segment costs nothing."""

    _CARRY_S = 2.0

    def __init__(self, cfg: SegmentConfig, sample_rate: int = 16_000) -> None:
        self.cfg, self.sr = cfg, sample_rate
        self.window = int(cfg.vad_window_s * sample_rate)
        self.blocks: list[np.ndarray] = []
        self.held = 0
        self.offset = 0  # samples of the recording before the held ones
        self.regions: list[tuple[float, float]] = []

    def feed(self, block: np.ndarray) -> None:
        self.blocks.append(block)
        self.held += block.size
        while self.held >= self.window:
            self._window()

    def finish(self, run: bool = True) -> list[tuple[float, float]]:
        """The regions of the whole recording, in seconds (``run=False``: the rest is not
        examined, for a recording that turned out not to be segmented)."""
        if run and self.held:
            x = np.concatenate(self.blocks)
            self.regions += [(self.offset / self.sr + s, self.offset / self.sr + e) for s, e in speech_regions(x, self.cfg, self.sr)]
        self.blocks, self.held = [], 0
        return self.regions

    def _window(self) -> None:
        x = np.concatenate(self.blocks)
        win = x[:self.window]
        found = speech_regions(win, self.cfg, self.sr)
        cut = len(win) / self.sr - self._CARRY_S
        for s, e in found:
            if s < cut < e or s >= cut:
                cut = s  # a region that crosses the cut, or starts after it, goes to the next window
                break
        cut_n = max(int(cut * self.sr), self.sr)  # always move on (regions are at most 29.5 s)
        base = self.offset / self.sr
        self.regions += [(base + s, base + e) for s, e in found if e <= cut_n / self.sr]
        rest = x[cut_n:]
        self.blocks, self.held, self.offset = [rest], rest.size, self.offset + cut_n


def cap_words(words: Sequence[Word], max_word_s: float) -> list[Word]:
    """Words in time order, each at most ``max_word_s`` long and not overlapping the next."""
    ws = sorted(words, key=lambda w: (w.start, w.end))
    out = []
    for i, w in enumerate(ws):
        end = min(w.end, w.start + max_word_s)
        if i + 1 < len(ws):
            end = min(end, max(ws[i + 1].start, w.start))
        out.append(Word(w.start, max(end, w.start), w.text, w.prob, w.no_speech_prob))
    return out


def _gaps(words: Sequence[Word]) -> list[float]:
    return [words[i + 1].start - words[i].end for i in range(len(words) - 1)]


def _span(words: Sequence[Word]) -> float:
    return words[-1].end - words[0].start


def _split_pieces(words: list[Word], cfg: SegmentConfig) -> list[list[Word]]:
    """Steps 2-3: cut at long pauses, sentence ends, and clause ends past the target."""
    pieces: list[list[Word]] = []
    cur: list[Word] = []
    for i, w in enumerate(words):
        if cur and w.start - cur[-1].end >= cfg.split_gap_s:
            pieces.append(cur)
            cur = []
        cur.append(w)
        nxt_gap = words[i + 1].start - w.end if i + 1 < len(words) else 0.0
        length = _span(cur)
        token = w.text.strip()
        if length >= cfg.target_min_s and _SENTENCE_END.search(token):
            pieces.append(cur)
            cur = []
        elif length >= cfg.target_max_s and (_CLAUSE_END.search(token) or nxt_gap >= _SOFT_GAP_S):
            pieces.append(cur)
            cur = []
    if cur:
        pieces.append(cur)
    return pieces


def _split_long(piece: list[Word], max_s: float) -> list[list[Word]]:
    """Step 4: split at the largest pause until every piece is at most ``max_s``."""
    if len(piece) < 2 or _span(piece) <= max_s:
        return [piece]
    gaps = np.array(_gaps(piece))
    k = int(np.argmax(gaps)) + 1
    if gaps.max() <= 0:  # no pause at all: cut near the middle of the time span
        mid = piece[0].start + _span(piece) / 2
        k = max(1, min(len(piece) - 1, int(np.searchsorted([w.start for w in piece], mid))))
    return _split_long(piece[:k], max_s) + _split_long(piece[k:], max_s)


def _merge_short(pieces: list[list[Word]], cfg: SegmentConfig) -> list[list[Word]]:
    """Step 5: a piece under ``min_s`` joins the neighbour across the smaller pause."""
    pieces = [p for p in pieces if p]
    changed = True
    while changed and len(pieces) > 1:
        changed = False
        for i, p in enumerate(pieces):
            if _span(p) >= cfg.min_s:
                continue
            options = []
            if i > 0:
                options.append((p[0].start - pieces[i - 1][-1].end, i - 1))
            if i + 1 < len(pieces):
                options.append((pieces[i + 1][0].start - p[-1].end, i + 1))
            for gap, j in sorted(options):
                a, b = (pieces[j], p) if j < i else (p, pieces[j])
                if gap <= cfg.merge_gap_s and _span(a + b) <= cfg.max_s:
                    lo = min(i, j)
                    pieces[lo:lo + 2] = [a + b]
                    changed = True
                    break
            if changed:
                break
    return pieces


def _pad(pieces: list[list[Word]], pad_s: float, duration: float) -> list[Utterance]:
    """Step 6: padding on each side, bounded by the neighbours' midpoints and the file."""
    out = []
    for i, p in enumerate(pieces):
        lo = 0.0 if i == 0 else (pieces[i - 1][-1].end + p[0].start) / 2
        hi = duration if i + 1 == len(pieces) else (p[-1].end + pieces[i + 1][0].start) / 2
        start = max(lo, p[0].start - pad_s)
        end = min(hi, p[-1].end + pad_s)
        out.append(Utterance(round(max(0.0, start), 3), round(min(duration, end), 3), tuple(p)))
    return out


def compression_ratio(text: str) -> float:
    """Whisper's measure of repetitive text: bytes / zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, single spaces: text to compare, not to show."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def longest_repeat(tokens: Sequence[str], max_n: int = 4) -> int:
    """Most consecutive repetitions of any 1..``max_n``-gram in ``tokens``."""
    best = 1 if tokens else 0
    for n in range(1, max_n + 1):
        for start in range(n):
            run, prev = 1, None
            for k in range(start, len(tokens) - n + 1, n):
                gram = tuple(tokens[k:k + n])
                run = run + 1 if gram == prev else 1
                prev = gram
                best = max(best, run)
    return best


def drop_reason(u: Utterance, cfg: SegmentConfig, stock: frozenset[str]) -> str | None:
    """Why an utterance is junk (one of :data:`DROP_REASONS`), or None to keep it."""
    text = u.text
    norm = normalize_text(text)
    tokens = norm.split()
    if norm in stock:
        return "stock_phrase"
    if u.no_speech_prob > cfg.no_speech_prob and u.avg_logprob < cfg.logprob_threshold:
        return "no_speech"
    if len(text) > 24 and compression_ratio(text) > cfg.max_compression_ratio:
        return "compression_ratio"
    if longest_repeat(tokens) > cfg.max_repeats:
        return "repetition"
    speech_s = u.words[-1].end - u.words[0].start
    if len("".join(text.split())) / max(speech_s, 0.1) > cfg.max_chars_per_s:
        return "implausible_rate"
    if speech_s < cfg.min_s:  # the words' span, as merging measures it (padding aside)
        return "too_short"
    if len(tokens) < cfg.min_words:
        return "too_few_words"
    return None


def build_utterances(words: Sequence[Word], duration: float, cfg: SegmentConfig) -> tuple[list[Utterance], Counter]:
    """The kept utterances of a recording (in time order) and the dropped ones by reason."""
    words = [w for w in cap_words(words, cfg.max_word_s) if w.text.strip()]
    if not words:
        return [], Counter()
    pieces = [q for p in _split_pieces(words, cfg) for q in _split_long(p, cfg.max_s)]
    utterances = _pad(_merge_short(pieces, cfg), cfg.pad_s, duration)
    stock = frozenset(normalize_text(s) for s in cfg.stock_phrases)
    kept, dropped = [], Counter()
    for u in utterances:
        why = drop_reason(u, cfg, stock)
        if why:
            dropped[why] += 1
        else:
            kept.append(u)
    return kept, dropped


def utterance_id(source_id: str, start_s: float, end_s: float) -> str:
    """``{source_id}@{start_ms}-{end_ms}``: stable across re-runs with the same settings."""
    return f"{source_id}@{int(round(start_s * 1000))}-{int(round(end_s * 1000))}"
