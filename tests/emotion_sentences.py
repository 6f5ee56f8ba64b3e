"""Clearly emotional English sentences, synthesized with espeak-ng and labeled through the real
CLI with the packaged models: the shared data of ``lanser-label evaluate`` and ``tune`` tests
(the session fixture ``emotion_run`` in tests/labeler/conftest.py labels them once)."""

import csv
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from fixtures import REPO

DEMO = str(REPO / "labeler" / "configs" / "demo.yaml")
EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]

#: Two sentences per Ekman label; the gold label of the first is written capitalized (gold
#: names are matched case-insensitively) and joy1's as "happy" (mapped with --map).
SENTENCES = {
    "anger1": ("Anger", "I am furious with you! How dare you break your promise again, this is outrageous!"),
    "anger2": ("anger", "Get out of my office right now, I am so angry I could scream!"),
    "disgust1": ("Disgust", "Ugh, that is disgusting. The milk is rotten and it smells revolting."),
    "disgust2": ("disgust", "That is gross, there are maggots crawling in the garbage. I feel sick."),
    "fear1": ("Fear", "I am terrified. Someone is breaking into the house, please help me!"),
    "fear2": ("fear", "I am so scared of the dark, I can hear footsteps behind me."),
    "joy1": ("happy", "I am so happy today! This is wonderful news, I love it!"),
    "joy2": ("joy", "We won the championship! I am overjoyed, this is the best day of my life!"),
    "sadness1": ("Sadness", "I miss her so much. Since she died I feel empty and I cry every night."),
    "sadness2": ("sadness", "I lost my job and my dog died. I feel so sad and lonely."),
    "surprise1": ("Surprise", "Wow, I did not expect that at all! What a surprise!"),
    "surprise2": ("surprise", "Oh my goodness, you are here? I can't believe it, what a shock!"),
    "neutral1": ("Neutral", "The meeting is scheduled for Tuesday at ten in room four."),
    "neutral2": ("neutral", "Please take the second left and then continue straight for two kilometers."),
}
#: Gold rows beyond the sentences: silence (abstains), a corrupt file matched by a relative
#: uri (an error row), an utterance not in the run, and a label outside the taxonomy.
EXTRA_GOLD = [
    {"utt_id": "silence", "uri": "", "label": "neutral", "text": ""},
    {"utt_id": "", "uri": "clips/broken.wav", "label": "anger", "text": ""},
    {"utt_id": "ghost", "uri": "", "label": "fear", "text": "I am afraid of ghosts."},
    {"utt_id": "joy2", "uri": "", "label": "excited", "text": "We won!"},
]
TARGET = 0.95


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "labeler", *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lanser-label: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def label_sentences(d: Path):
    """The sentences (espeak-ng), 3 s of silence and a corrupt file under ``d/clips``, labeled
    once through the CLI with the packaged models (demo.yaml) into ``d/out``; and the gold
    CSV for them. Returns (d, clips, out, gold, run_id)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("needs espeak-ng (make test installs it)")
    clips = d / "clips"
    clips.mkdir()
    for name, (_, text) in SENTENCES.items():
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(clips / f"{name}.wav"), text], check=True, capture_output=True)
    with wave.open(str(clips / "silence.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"\x00\x00" * 16_000 * 3)
    (clips / "broken.wav").write_bytes(bytes(range(256)) * 20)
    out = d / "out"
    proc = cli("label", "--config", DEMO, "--input", str(clips), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    gold = d / "gold.csv"
    with open(gold, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["utt_id", "uri", "label", "text"])
        w.writeheader()
        w.writerows([{"utt_id": k, "uri": "", "label": lab, "text": t} for k, (lab, t) in SENTENCES.items()] + EXTRA_GOLD)
    run_id = json.loads(sorted((out / "runs").glob("*.json"))[-1].read_text())["run_id"]
    return d, clips, out, gold, run_id
