"""ASR packing on distinct and repetitive speech: the ASR stage against the naive loop.

    make bench-asr        # or: .venv/bin/python -m bench.asr_packing [--seconds 150]

Packing short clips into shared 30-s windows pays on distinct speech; on speech that
repeats itself (a call centre's greeting, IVR prompts, "thank you") Whisper merges or drops
the repeats within a window and lanser's checks send those clips to one-clip windows
(README, "Packed ASR"). Four sets, each timed in the same run against one faster-whisper
``transcribe`` per clip (warm-up excluded from both, same model and settings):

- **distinct**: Debian's Asterisk prompts (real speech, one voice), ``--seconds`` of them;
- **one sentence**: "Thank you for calling, how can I help you today?" by espeak-ng in 7
  voices x 6 speeds (42 clips);
- **two phrases**: two sentences, each in 7 voices x 3 speeds, shuffled together;
- **prompts repeated**: 6 Asterisk prompts, 7 copies each at a random gain with a little
  noise (so no two are the same bytes, as the stage deduplicates those), shuffled.

Each set runs ``--repeat`` times (3) in alternation, naive then stage, and each side's
figures are those of its median run by wall time (a fresh stage each run, its model load
excluded): on a shared machine one side's wall time moves by a quarter between runs of the
same work, so a single run can make or miss a goal by noise; each run's times and ratio
are printed below the set. Per set: wall seconds of both sides, the ratio (and the ratio of the process's CPU
seconds, steadier on a loaded machine), the WER of both against the spoken text, and the
stage's counters (windows, failed windows, windows decoded anchored and the clips so
decoded, retries, clips in one-clip windows, clips decoded alone). Below each set, the
seconds both sides spent in CTranslate2's ``encode``, ``generate`` and ``align``, and the
ratio the stage would reach if its encoder passes (and all else but decoding) cost nothing:
packing saves encoder passes, while both sides generate the same text, so decoding bounds
the gain. And the other bound: the ratio if the clips filled the fewest windows they fit
in (``asr.pack_window_s`` with ``asr.pack_gap_s`` between clips), every window passed its
first decode, and nothing but CTranslate2 cost anything, at this run's mean cost of such a
window (an encoder pass, a whole-window beam search, an alignment): what any packing could
reach here. Goals (issue 16): distinct >= 5x, repetitive >= 2.5x, never slower
than naive, WER no worse. The load average is printed beside each set: on a shared
machine the wall times are noisy, the ratio within a set less so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile

import numpy as np

SR = 16_000
VOICES = ["en-us", "en", "en-us+f3", "en+m3", "en-us+m7", "en+f2", "en-us+f4"]
SENTENCE = "Thank you for calling, how can I help you today?"
SECOND = "Please hold the line, an agent will be with you shortly."


def espeak(texts_speeds: list[tuple[str, str, int]], out_dir: str):
    """Clips (path, reference) synthesized by espeak-ng: (text, voice, words per minute)."""
    from bench.speech import Clip

    clips = []
    for k, (text, voice, wpm) in enumerate(texts_speeds):
        path = os.path.join(out_dir, f"{k:03d}-{voice}-{wpm}.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", path, text], check=True, capture_output=True)
        clips.append(Clip(f"e{k}", path, text))
    return clips


def build_sets(seconds: float, seed: int, out_dir: str) -> dict[str, tuple[list, list]]:
    """Set name -> (clips with references, 16-kHz waveforms)."""
    from faster_whisper import decode_audio

    from bench.speech import Clip, asterisk_clips

    rng = random.Random(seed)
    load = lambda clips: (clips, [decode_audio(c.path, sampling_rate=SR) for c in clips])  # noqa: E731
    sets = {"distinct": load(asterisk_clips(seconds))}
    sets["one sentence"] = load(espeak([(SENTENCE, v, s) for v in VOICES for s in range(130, 206, 15)], out_dir))
    two = [(t, v, s) for t in (SENTENCE, SECOND) for v in VOICES for s in (140, 170, 200)]
    rng.shuffle(two)
    sets["two phrases"] = load(espeak(two, out_dir))
    prompts = [c for c in asterisk_clips(60.0) if 1.5 <= _seconds(c.path) <= 4.5][:6]
    copies = [(c, k) for c in prompts for k in range(7)]
    rng.shuffle(copies)
    noise = np.random.default_rng(seed)
    waves = []
    for c, _ in copies:
        a = decode_audio(c.path, sampling_rate=SR) * rng.uniform(0.6, 1.0)
        waves.append((a + noise.normal(0, 1e-3, a.shape)).astype(np.float32))
    sets["prompts repeated"] = ([Clip(f"{c.utt_id}-{k}", c.path, c.reference) for c, k in copies], waves)
    return sets


def _seconds(path: str) -> float:
    import soundfile as sf

    return sf.info(path).duration


def main(argv=None) -> int:
    from bench.__main__ import asr_detail_lines, bench_asr
    from labeler.config import load_config

    p = argparse.ArgumentParser(prog="python -m bench.asr_packing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=150.0, help="distinct set: Asterisk prompts, seconds of audio")
    p.add_argument("--config", default="bench/config.yaml", help="label config (its asr section is used)")
    p.add_argument("--sets", default="distinct,one sentence,two phrases,prompts repeated", help="comma-separated sets to run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of both sides per set, alternating; each side's figures are its median run's")
    p.add_argument("--json", default="bench/out/asr_packing.json", help="where to write the figures")
    args = p.parse_args(argv)

    cfg = load_config(args.config, {"ray.progress": False})
    with tempfile.TemporaryDirectory(prefix="lanser-bench-asr-") as tmp:
        sets = build_sets(args.seconds, args.seed, tmp)
        print(f"\nASR packing bench: {cfg.asr.model} {cfg.asr.compute_type}, beam {cfg.asr.beam_size}, "
              f"{cfg.asr.chunk_batch_size} windows per encoder call, {cfg.asr.beam_search_windows} per beam search, "
              f"{os.cpu_count()} cores; median of {args.repeat} alternating runs per side")
        print(f"{'set':<18}{'clips':>6}{'audio s':>9}{'naive s':>9}{'stage s':>9}{'ratio':>7}{'cpu ratio':>10}{'WER naive':>11}"
              f"{'WER stage':>11}  windows failed anchored(clips) retries single alone  load")
        res = {}
        for name in [s.strip() for s in args.sets.split(",")]:
            clips, audios = sets[name]
            r = bench_asr(clips, audios, cfg.asr, args.repeat)
            r.pop("transcripts")
            r["load_average"] = [round(x, 1) for x in os.getloadavg()]
            res[name] = r
            n, s = r["naive"], r["lanser"]
            print(f"{name:<18}{len(clips):>6}{r['audio_seconds']:>9.1f}{n['wall_s']:>9.1f}{s['wall_s']:>9.1f}{r['ratio']:>6.2f}x"
                  f"{r['cpu_ratio']:>9.2f}x{n['wer_pct']:>10.2f}%{s['wer_pct']:>10.2f}%  {s['packed_windows']:>7} "
                  f"{s['failed_windows']:>6} {s['anchored_windows']:>8}({s.get('anchored_clips', 0):>3}) {s['retry_windows']:>7} {s['single_clips']:>6} "
                  f"{s['alone_clips']:>5}  {r['load_average'][0]:.1f}", flush=True)
            for line in asr_detail_lines(r):
                print(f"{'':<18}{line}", flush=True)
    print("goals: distinct >= 5x, repetitive >= 2.5x, never slower than naive, WER no worse")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
