"""Synthetic emotional speech for the label-efficiency demonstration (``bench/label_efficiency.py``)
and its small version in the tests: espeak-ng voices whose prosody follows the emotion.

Two corpora come out of it:

- **unlabeled**: clips whose *words and prosody* both carry the emotion (an emotional
  sentence, spoken fast and loud with a wide pitch range when angry, slowly, low, quietly
  and with long pauses when sad, ...). The labeler gives them weak labels from the words;
  the trainer learns from the audio, where the same emotion is audible.
- **labeled**: a RAVDESS-layout tree (``Actor_NN/03-01-EE-II-SS-RR-NN.wav``, as
  ``trainer.corpora`` reads it) whose two sentences are *lexically neutral* ("Kids are
  talking by the door", "Dogs are sitting by the door", as in RAVDESS), so the emotion is in
  the prosody only: what a model learned from the words' weak labels must have gone into
  hearing the prosody to help here.

Every clip's prosody is the emotion's profile (:data:`PROFILES`), moved by its voice's own
habits (a speaker's pitch and rate, drawn once per voice) and jittered per clip, all from one
seed: the same seed writes the same files. Voices are espeak-ng languages x variants; the
labeled actors' voices are never used in the unlabeled corpus (speaker-independent).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from xml.sax.saxutils import escape

import numpy as np

#: The four emotions of the demonstration: (RAVDESS code, Ekman label the weak labels use).
EMOTIONS = {"neutral": ("01", "neutral"), "happy": ("03", "joy"), "sad": ("04", "sadness"), "angry": ("05", "anger")}

#: Prosody per emotion, as espeak-ng SSML ``<prosody>`` settings: rate (x normal speed), pitch
#: (% shift of the voice's pitch), range (% of the normal pitch range), volume (x normal) and
#: the pause between the two phrases of a clip (ms).
PROFILES = {
    "neutral": {"rate": 1.0, "pitch": 0.0, "range": 60.0, "volume": 1.0, "pause_ms": 250.0},
    "happy": {"rate": 1.15, "pitch": 30.0, "range": 180.0, "volume": 1.3, "pause_ms": 150.0},
    "sad": {"rate": 0.72, "pitch": -25.0, "range": 25.0, "volume": 0.6, "pause_ms": 650.0},
    "angry": {"rate": 1.3, "pitch": 10.0, "range": 300.0, "volume": 1.8, "pause_ms": 60.0},
}

#: espeak-ng languages and voice variants; a voice is one of each.
LANGUAGES = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5"]

#: Emotional phrases (two per clip, joined with a pause): the words say the emotion.
PHRASES = {
    "neutral": [
        "I am calm, everything is normal", "I feel neutral about it, it is fine", "The weather is mild and I feel calm",
        "I am not bothered, it is all the same to me", "The meeting is on Tuesday at ten", "The train leaves from platform two",
        "I will send the file this afternoon", "We moved the boxes to the second floor",
    ],
    "happy": [
        "I am so happy today", "This is wonderful news, I love it", "We won the championship",
        "What a beautiful day, I feel great", "I am thrilled and delighted", "This is the best day of my life",
        "Thank you so much, I am overjoyed", "We are going on holiday, how lovely",
    ],
    "sad": [
        "I miss her so much", "I feel empty and alone", "My dog died last night",
        "I lost my job and I cannot stop crying", "Nothing will ever be the same", "I am so sad and tired",
        "Everyone has left me", "I wish she had not gone",
    ],
    "angry": [
        "I am furious with you", "How dare you break your promise, I am so angry", "Get out of my office, I am furious",
        "This is outrageous, I am sick of it", "Stop lying to me, I am angry", "I am so angry I could scream",
        "You make me furious", "I am mad at you and fed up",
    ],
}

#: The labeled corpus's two lexically neutral statements, as RAVDESS' statement codes 01 and 02.
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


@dataclass(frozen=True)
class Voice:
    language: str
    variant: str
    pitch: float  # the speaker's own pitch shift, %
    rate: float  # the speaker's own speed, x

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass(frozen=True)
class Clip:
    path: str
    emotion: str
    text: str
    voice: str
    rate: float
    pitch: float
    range: float
    volume: float
    pause_ms: float


def voices(seed: int) -> list[Voice]:
    """Every language x variant, in a seeded order, each with its own pitch and rate habits."""
    rng = np.random.default_rng(seed)
    pairs = [(lang, var) for lang in LANGUAGES for var in VARIANTS]
    order = rng.permutation(len(pairs))
    return [Voice(pairs[i][0], pairs[i][1], float(rng.uniform(-15, 15)), float(rng.uniform(0.9, 1.1))) for i in order]


def split_voices(seed: int, actors: int) -> tuple[list[Voice], list[Voice]]:
    """(the labeled corpus's actors, the unlabeled corpus's voices): disjoint."""
    vs = voices(seed)
    if actors >= len(vs):
        raise ValueError(f"at most {len(vs) - 1} actors: there are {len(vs)} voices and the unlabeled corpus needs some")
    return vs[:actors], vs[actors:]


def prosody(emotion: str, voice: Voice, rng: np.random.Generator, strength: float = 1.0) -> dict[str, float]:
    """The emotion's profile at ``strength`` (1 = normal; RAVDESS' strong intensity is more),
    shifted by the voice's habits and jittered per clip."""
    base, neutral = PROFILES[emotion], PROFILES["neutral"]
    p = {k: neutral[k] + strength * (base[k] - neutral[k]) for k in base}
    return {
        "rate": p["rate"] * voice.rate * float(rng.uniform(0.92, 1.08)),
        "pitch": p["pitch"] + voice.pitch + float(rng.uniform(-6, 6)),
        "range": max(5.0, p["range"] * float(rng.uniform(0.8, 1.2))),
        "volume": max(0.2, p["volume"] * float(rng.uniform(0.85, 1.15))),
        "pause_ms": max(20.0, p["pause_ms"] * float(rng.uniform(0.7, 1.3))),
    }


def ssml(phrases: list[str], p: dict[str, float]) -> str:
    """The phrases in one ``<prosody>``, separated by ``<break>``s of the clip's pause."""
    body = f'<break time="{p["pause_ms"]:.0f}ms"/>'.join(escape(t) for t in phrases)
    return (
        f'<speak><prosody rate="{100 * p["rate"]:.0f}%" pitch="{p["pitch"]:+.0f}%" range="{p["range"]:.0f}%" '
        f'volume="{100 * p["volume"]:.0f}%">{body}</prosody></speak>'
    )


def speak(path: str, voice: Voice, phrases: list[str], p: dict[str, float]) -> None:
    """One WAV (espeak-ng's 22,050 Hz mono) at ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    proc = subprocess.run(["espeak-ng", "-m", "-v", voice.name, "-w", path, ssml(phrases, p)], capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"espeak-ng failed for {path}: {proc.stderr.strip()[:300]}")


def require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed (Debian package espeak-ng; `make debs` installs it)")


def write_unlabeled(directory: str, per_emotion: int, voice_pool: list[Voice], seed: int) -> list[Clip]:
    """``per_emotion`` clips of each emotion under ``directory`` (shuffled names ``clipNNNNN.wav``,
    so nothing but the audio and its words tells the emotion); two emotional phrases each, a
    random voice of the pool each. Returns the clips with their true emotion."""
    require_espeak()
    rng = np.random.default_rng(seed)
    jobs = [(emo, k) for emo in PROFILES for k in range(per_emotion)]
    order = rng.permutation(len(jobs))
    clips = []
    for n, j in enumerate(order):
        emo, _ = jobs[j]
        voice = voice_pool[int(rng.integers(len(voice_pool)))]
        phrases = [str(x) for x in rng.choice(PHRASES[emo], size=2, replace=False)]
        p = prosody(emo, voice, rng)
        path = os.path.join(directory, f"clip{n:05d}.wav")
        speak(path, voice, phrases, p)
        clips.append(Clip(path, emo, ". ".join(phrases) + ".", voice.name, **p))
    return clips


def write_ravdess(root: str, actors: list[Voice], seed: int, repetitions: int = 2) -> list[Clip]:
    """A RAVDESS-layout tree under ``root``: for every actor (``Actor_01``..), emotion, intensity
    (01 normal, 02 strong), statement and repetition, one speech clip
    ``03-01-EE-II-SS-RR-NN.wav`` of a lexically neutral statement in the emotion's prosody."""
    require_espeak()
    rng = np.random.default_rng(seed)
    clips = []
    for a, voice in enumerate(actors, start=1):
        for emo, (code, _) in EMOTIONS.items():
            for intensity, strength in (("01", 1.0), ("02", 1.4)):
                for statement, text in STATEMENTS.items():
                    for rep in range(1, repetitions + 1):
                        p = prosody(emo, voice, rng, strength)
                        name = f"03-01-{code}-{intensity}-{statement}-{rep:02d}-{a:02d}.wav"
                        path = os.path.join(root, f"Actor_{a:02d}", name)
                        words = text.split()
                        # The pause falls after the subject, as a speaker would place it.
                        speak(path, voice, [" ".join(words[:3]), " ".join(words[3:])], p)
                        clips.append(Clip(path, emo, text + ".", voice.name, **p))
    return clips


def clip_rows(clips: list[Clip]) -> list[dict]:
    return [asdict(c) for c in clips]
