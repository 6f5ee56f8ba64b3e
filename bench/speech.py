"""Real human speech with reference transcripts: Debian's Asterisk prompts (one voice, 8 kHz)."""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass

SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
TEXTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


@dataclass(frozen=True)
class Clip:
    utt_id: str
    path: str
    reference: str


def asterisk_references() -> dict[str, str]:
    """Prompt name (``vm-options``, ``digits/1``) -> its spoken reference text; non-speech
    entries (``[this is a simple beep tone]``) left out."""
    if not os.path.isdir(SOUNDS) or not os.path.exists(TEXTS):
        raise SystemExit("needs Debian packages asterisk-core-sounds-en-wav and asterisk-core-sounds-en (make debs)")
    refs = {}
    with gzip.open(TEXTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"^([\w/-]+):\s*(.+)$", line.strip())
            if m and not m.group(2).startswith("["):
                refs[m.group(1)] = m.group(2)
    return refs


def asterisk_clips(min_total_s: float = 300.0, min_clip_s: float = 1.0, limit: int | None = None) -> list[Clip]:
    """The first prompts (sorted by name) with a spoken reference, until ``min_total_s`` of audio."""
    import soundfile as sf

    refs = asterisk_references()
    clips, total = [], 0.0
    for name in sorted(refs):
        path = os.path.join(SOUNDS, name + ".wav")
        if not os.path.exists(path):
            continue
        dur = sf.info(path).duration
        if dur < min_clip_s:
            continue
        clips.append(Clip(name.replace("/", "_"), path, refs[name]))
        total += dur
        if total >= min_total_s or (limit and len(clips) >= limit):
            break
    return clips


@dataclass(frozen=True)
class Prompt:
    path: str
    text: str
    duration_s: float


def asterisk_prompts(min_s: float = 2.5, max_s: float = 8.0) -> list[Prompt]:
    """The top-level prompts that are one sentence (no sentence end inside the reference) and
    ``min_s``-``max_s`` long, by path: the pieces long recordings are built from."""
    import soundfile as sf

    out = []
    for name, text in asterisk_references().items():
        if "/" in name or re.search(r"[.!?]\s+\S", text):
            continue
        path = os.path.join(SOUNDS, f"{name}.wav")
        if os.path.exists(path):
            dur = sf.info(path).duration
            if min_s <= dur <= max_s:
                out.append(Prompt(path, text, dur))
    return sorted(out, key=lambda p: p.path)


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate in percent, after Whisper's English text normalizer (the one the
    Whisper paper reports WER with: case, punctuation, hyphens, numbers such as "two" and
    "2", British/American spellings not included), the same for both sides."""
    import jiwer
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    norm = EnglishTextNormalizer({})
    return 100.0 * jiwer.wer([norm(r) or "<empty>" for r in references], [norm(h) or "<empty>" for h in hypotheses])
