"""Memory of a long recording in lanser's workers: streamed (today) against decoded whole.

    .venv/bin/python -m bench.memory [--hours 2] [--json bench/out/memory.json]

A recording of ``--hours`` hours of real speech (Debian's Asterisk prompts, one after another
with seeded pauses of 0.6-2.0 s, resampled to 16 kHz) is written as 16-bit mono WAV. Each
side then runs in fresh worker processes, one per step, as Ray would run it:

- **decode worker**: the real :class:`labeler.stages.decode.DecodeStage` on a one-row batch
  (read and hash, decode, Silero VAD); its output row is written to disk for the next step.
- **ASR worker, audio side**: what the ASR actor holds of the recording before it transcribes:
  the row's audio and the cut speech regions (decoded whole), or the file read again and
  cut into groups of ``decode.stream_above_s`` seconds of speech (streamed;
  :func:`labeler.audio.spans_of_stream`, with its prefetch thread). The transcription
  itself is not run: its memory (the model and one packed batch) is the same for both
  sides and does not grow with the recording.

The two sides differ only by settings: **whole** (what lanser did before) is
``decode.read_whole_max_mb`` and ``decode.stream_above_s`` beyond the file and
``segment.vad_window_s`` beyond its length; **streamed** is the defaults. Reported per step:
peak RSS of the process (``ru_maxrss``), the same over the process before the step (imports,
VAD model loaded), the bytes of the row handed to ASR, and seconds. The figures go to
``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SR = 16_000
SIDES = {
    "whole": {"decode": {"read_whole_max_mb": 1e6, "stream_above_s": 1e9}, "segment": {"vad_window_s": 1e9}},
    "streamed": {},
}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(path: str, hours: float, seed: int = 0) -> tuple[float, int]:
    """Write the recording, a block at a time: (seconds, prompts)."""
    import soundfile as sf

    from bench.speech import asterisk_prompts

    def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
        n = int(round(len(x) * dst / src))
        return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)

    rng = random.Random(seed)
    pool = []
    for p in asterisk_prompts():
        x, sr = sf.read(p.path, dtype="float32")
        pool.append(resample(x if x.ndim == 1 else x.mean(axis=1), sr, SR))
    total, n = 0, 0
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        f.write(np.zeros(SR, np.float32))
        while total < hours * 3600 * SR:
            x = pool[rng.randrange(len(pool))]
            pause = np.zeros(int(rng.uniform(0.6, 2.0) * SR), np.float32)
            f.write(np.concatenate([x, pause]))
            total += x.size + pause.size
            n += 1
    return (total + SR) / SR, n


def worker(step: str, side: str, path: str, row_path: str) -> dict:
    """One step in this (fresh) process; prints its figures as JSON."""
    import pyarrow as pa

    from labeler.config import LabelConfig
    from labeler.segment import speech_regions

    cfg = LabelConfig.model_validate(SIDES[side])
    speech_regions(np.zeros(SR, np.float32), cfg.segment)  # the VAD model loaded: part of the worker, not the recording
    before, t0 = current_mib(), time.perf_counter()
    out: dict = {}
    if step == "decode":
        from labeler.stages.base import StageContext
        from labeler.stages.decode import DecodeStage

        batch = pa.table({"utt_id": ["talk"], "uri": [path], "error": pa.array([None], pa.string())})
        row = DecodeStage(cfg, StageContext())(batch)
        err = row.column("error")[0].as_py()
        if err:
            raise SystemExit(f"decode failed: {err}")
        audio = row.column("audio")[0].as_py()
        speech = row.column("speech")[0].as_py()
        out = {"row_bytes": int(row.nbytes), "audio_bytes": len(audio) if audio else 0, "speech_regions": len(speech),
               "speech_seconds": round(sum(e - s for s, e in speech), 1), "duration_s": row.column("duration_s")[0].as_py()}
        with pa.OSFile(row_path, "wb") as f, pa.ipc.new_file(f, row.schema) as w:
            w.write_table(row)
    else:  # what the ASR actor holds of the recording's audio
        from labeler.audio import PcmStream, prefetch, spans_of_stream

        with pa.memory_map(row_path) as f:
            row = pa.ipc.open_file(f).read_all()
        r = row.to_pylist()[0]
        regions = [(float(s), float(e)) for s, e in r["speech"]]
        held = 0
        if r["audio"] is not None:
            audio = np.frombuffer(r["audio"], dtype=np.float32)
            waves = [audio[int(round(s * SR)):int(round(e * SR))] for s, e in regions]
            held = sum(w.nbytes for w in waves)
            groups = 1
        else:
            groups = 0
            for group in prefetch(spans_of_stream(PcmStream(r["uri"]), regions, cfg.decode.stream_above_s)):
                held = max(held, sum(w.nbytes for _, w in group))
                groups += 1
        out = {"groups": groups, "most_audio_held_mib": round(held / 2**20, 1)}
    out.update(seconds=round(time.perf_counter() - t0, 1), peak_rss_mib=round(rss_mib(), 1),
               peak_over_start_mib=round(rss_mib() - before, 1))
    return out


def run_step(step: str, side: str, path: str, row_path: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--worker", step, "--side", side, "--file", path,
                           "--row", row_path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{step} ({side}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=2.0, help="length of the recording (default 2)")
    p.add_argument("--json", default="bench/out/memory.json", help="where to write the figures")
    p.add_argument("--worker", choices=("decode", "asr"), help=argparse.SUPPRESS)
    p.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.side, a.file, a.row)))
        return 0
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory(prefix="lanser-mem-") as tmp:
        path = os.path.join(tmp, "talk.wav")
        seconds, prompts = build(path, a.hours)
        res["recording"] = {"seconds": round(seconds, 1), "prompts": prompts, "wav_mib": round(os.path.getsize(path) / 2**20, 1)}
        print(f"recording: {seconds / 3600:.2f} h, {prompts} prompts, {res['recording']['wav_mib']} MiB of 16-bit wav")
        print(f"{'side':9} {'step':7} {'peak RSS':>9} {'over start':>11} {'row to ASR':>11} {'audio held':>11} {'seconds':>8}")
        for side in SIDES:
            row_path = os.path.join(tmp, f"row-{side}.arrow")
            res[side] = {"decode": run_step("decode", side, path, row_path), "asr": run_step("asr", side, path, row_path)}
            d, s = res[side]["decode"], res[side]["asr"]
            print(f"{side:9} {'decode':7} {d['peak_rss_mib']:>6.0f} MiB {d['peak_over_start_mib']:>7.0f} MiB "
                  f"{d['row_bytes'] / 2**20:>7.1f} MiB {'':>11} {d['seconds']:>8.1f}")
            print(f"{side:9} {'asr':7} {s['peak_rss_mib']:>6.0f} MiB {s['peak_over_start_mib']:>7.0f} MiB {'':>11} "
                  f"{s['most_audio_held_mib']:>7.1f} MiB {s['seconds']:>8.1f}")
        w, st = res["whole"], res["streamed"]
        print(f"speech regions: {st['decode']['speech_regions']} streamed, {w['decode']['speech_regions']} whole; "
              f"decode peak {w['decode']['peak_rss_mib'] / st['decode']['peak_rss_mib']:.1f}x lower streamed, "
              f"row to ASR {w['decode']['row_bytes'] / max(st['decode']['row_bytes'], 1):.0f}x smaller")
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"figures: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
