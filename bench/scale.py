"""Nightly runs at corpus scale: what a run costs when little or nothing is new.

    .venv/bin/python -m bench.scale [--sizes 10000,100000] [--new-fraction 0.01] [--json bench/out/scale.json]

For each size N a synthetic corpus is built: N tiny WAV files (0.1 s of seeded noise at
8 kHz, each distinct, so each has its own sha256; written once into a pool and hardlinked
into the corpus folder), a manifest of the same files (``corpus.parquet``), and an output
root with a **warm cache**, written as an earlier run would have left it: a transcript
(distinct text) for every file under the demo's ASR settings, and the entailment score of
every (transcript, label) pair under the demo's scorer. Then four label runs, each in a
fresh driver process that starts its own local Ray (as ``lanser-label label`` does), with
the demo config (``labeler/configs/demo.yaml``: Whisper tiny.en int8, embedding scorer):

1. **before, nothing new**: ``cache.rehash: true``, which is today's read path: every file
   is read and hashed, then found in the transcript cache by its sha256 (it also records
   each file's listing metadata in ``sources/``, which is what lets run 2 skip them);
2. **after, nothing new**: the default, incremental: files whose URI, size and mtime match
   ``sources/`` are not opened;
3. **before, 1% new**: ``N * new_fraction`` new files added, ``cache.rehash: true``;
4. **after, 1% new**: another ``N * new_fraction`` new files added, incremental.

Between runs 2 and 3, run 2 again with the caches built and looked up in ``--shards``
shards (``cache.shards``; default 8): what sharding costs a night with nothing new.

Runs 3 and 4 transcribe and score their new files for real. Per run: wall seconds of the
run (from ``run_labeling`` called to the manifest written; Ray's own start-up excluded,
actor start-up and model loading included), rows per second, the driver's peak RSS
(``ru_maxrss`` of the driver process; Ray's workers are other processes) and its RSS
before the run, the object store's peak (``object_store_bytes_used`` polled every 0.25 s),
audio files read, files skipped by metadata, files transcribed, and the stages' busy seconds.

Goals checked (issue 14), against the "before" runs of the same invocation:

- a no-new-audio run at the largest N reads no audio and is >= 10x faster than before;
- the driver's peak RSS grows by < 1 KiB per source (slope between the smallest and the largest N);
- a 1%-new night costs <= 5% of a first run plus the new audio's own ASR. A first run is not
  run here (it would transcribe all N files); it is bounded from below by the larger of
  run 1 (read everything, transcribe nothing) and N times the ASR busy seconds per new file
  of run 4 over the ASR actors, so the check is stricter than the goal. The new audio's
  ASR is the ASR stage's busy seconds in run 4.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "labeler", "configs", "demo.yaml")
SR = 8000
SAMPLES = 800  # 0.1 s


def wav_bytes(seed: int) -> bytes:
    pcm = np.random.default_rng(seed).integers(-2000, 2000, SAMPLES, dtype=np.int16).tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, SR * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(pcm)) + pcm


def make_pool(pool: str, n: int, start: int = 0) -> None:
    os.makedirs(pool, exist_ok=True)
    for k in range(start, start + n):
        p = os.path.join(pool, f"c{k:08d}.wav")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(wav_bytes(k))


def link_corpus(pool: str, corpus: str, ids: range) -> list[str]:
    """Hardlinks of pool files into the corpus, 1000 per sub-folder."""
    paths = []
    for k in ids:
        d = os.path.join(corpus, f"d{k // 1000:05d}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"c{k:08d}.wav")
        if not os.path.exists(p):
            os.link(os.path.join(pool, f"c{k:08d}.wav"), p)
        paths.append(p)
    return paths


def warm_cache(out: str, paths: list[str], cfg) -> None:
    """Transcripts and scores of every file, as an earlier run would have written them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler import schema as S
    from labeler.cache import key64, text_sha256
    from labeler.taxonomy import load_taxonomy

    n = len(paths)
    shas = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    texts = [f"synthetic utterance number {k} said on a quiet evening" for k in range(n)]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    ids = [os.path.relpath(p, os.path.dirname(os.path.dirname(p)))[:-4] for p in paths]
    dur = SAMPLES / SR
    t = pa.table({
        "audio_sha256": shas, "utt_id": ids, "uri": paths, "source_id": ids,
        "segment_index": pa.array([0] * n, pa.int32()), "segment_count": pa.array([1] * n, pa.int32()),
        "start_s": [0.0] * n, "end_s": [dur] * n, "duration_s": [dur] * n,
        "asr_model": [cfg.asr.model] * n, "asr_config_hash": [cfg.asr.config_hash()] * n, "language": ["en"] * n,
        "language_prob": pa.array([1.0] * n, pa.float32()), "text": texts,
        "avg_logprob": pa.array([-0.2] * n, pa.float32()), "no_speech_prob": pa.array([0.01] * n, pa.float32()),
        "error": pa.nulls(n, pa.string()), "created_at": pa.array([now] * n, S.TIMESTAMP),
    })
    d = S.transcripts_partition(out, "20260101T000000Z-warmcach")
    os.makedirs(d, exist_ok=True)
    pq.write_table(S.conform(t, S.TRANSCRIPTS_FILE_SCHEMA), os.path.join(d, "part-0.parquet"))
    tax = load_taxonomy(cfg.taxonomy)
    key = cfg.scorer.key_hash()
    hyps = tax.hypotheses
    rng = np.random.default_rng(0)
    keys = np.array([key64(key, x, h) for x in texts for h in hyps], np.uint64)
    s = pa.table({
        "pair_key": pa.array(keys, pa.uint64()), "text_sha256": [text_sha256(x) for x in texts for _ in hyps],
        "hypothesis": hyps * n, "raw_score": pa.array(rng.normal(0, 1, len(keys)).astype(np.float32)),
        "scorer": [f"{cfg.scorer.backend}:{cfg.scorer.model}"] * len(keys), "created_at": pa.array([now] * len(keys), S.TIMESTAMP),
    })
    d = S.scores_partition(out, key, "20260101T000000Z-warmcach")
    os.makedirs(d, exist_ok=True)
    pq.write_table(S.conform(s, S.SCORES_FILE_SCHEMA), os.path.join(d, "part-0.parquet"))


def rss_mib() -> float:
    """This process's peak RSS. ``VmHWM`` (Linux) starts afresh at ``exec``; ``ru_maxrss`` may
    not (a run's process is forked from the bench, whose corpus building would show as the
    run's peak), so it is only the fallback elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(corpus: str, out: str, rehash: bool, shards: int | None = None) -> dict:
    """One label run in this (fresh) process: the driver."""
    import ray

    from labeler.config import load_config
    from labeler.pipeline import run_labeling

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    peak = {"store": 0}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            try:
                peak["store"] = max(peak["store"], get_memory_info_reply(state).store_stats.object_store_bytes_used)
            except Exception:
                pass
            stop.wait(0.25)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    over = {"input": corpus, "output": out, "ray.progress": False}
    if rehash:
        over["cache.rehash"] = True
    if shards:
        over["cache.shards"] = shards
    cfg = load_config(CONFIG, over)
    base = rss_mib()
    t0 = time.perf_counter()
    m = run_labeling(cfg).manifest
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    c = m["counts"]
    return {
        "wall_s": round(wall, 2), "rows": c["input_rows"], "rows_per_s": round(c["input_rows"] / wall, 1),
        "driver_peak_rss_mib": round(rss_mib(), 1), "driver_rss_before_run_mib": round(base, 1),
        "object_store_peak_mib": round(peak["store"] / 2**20, 1),
        "audio_files_read": m["audio_files_read"], "sources_skipped_by_metadata": c.get("sources_skipped_by_metadata"),
        "transcribed": m["cache"].get("transcribed", 0), "transcripts_from_cache": m["cache"].get("transcripts_from_cache", 0),
        "stage_busy_seconds": m["stage_busy_seconds"], "status": c["status"], "cache_sizes": m["cache_sizes"],
    }


def run_one(corpus: str, out: str, rehash: bool, shards: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--one", corpus, "--out", out] + (["--rehash"] if rehash else [])
                          + ([f"--shards={shards}"] if shards else []),
                          capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n: int, new: int, work: str, partial: str | None = None, shards: int = 0) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.config import load_config

    pool, root = os.path.join(work, "pool"), os.path.join(work, f"n{n}")
    corpus, out = os.path.join(root, "corpus"), os.path.join(root, "out")
    if os.path.exists(root):
        import shutil

        shutil.rmtree(root)
    make_pool(pool, n + 2 * new)
    paths = link_corpus(pool, corpus, range(n))
    pq.write_table(pa.table({"uri": paths}), os.path.join(root, "corpus.parquet"))
    warm_cache(out, paths, load_config(CONFIG, {}))
    runs = {}
    print(f"N={n}: corpus and warm cache ready", file=sys.stderr, flush=True)
    plan = [("before_no_new", None, True, None), ("after_no_new", None, False, None)]
    if shards:  # the same night with the caches built and looked up in shards
        plan += [(f"after_no_new_{shards}_shards", None, False, shards)]
    if new:  # --new-fraction 0: the nothing-new nights only
        plan += [("before_1pct_new", range(n, n + new), True, None), ("after_1pct_new", range(n + new, n + 2 * new), False, None)]
    for name, add, rehash, k in plan:
        if add is not None:
            link_corpus(pool, corpus, add)
        runs[name] = run_one(corpus, out, rehash, k)
        print(f"N={n} {name}: {runs[name]['wall_s']} s, {runs[name]['audio_files_read']} files read, "
              f"driver peak {runs[name]['driver_peak_rss_mib']} MiB", file=sys.stderr, flush=True)
        if partial:  # what is measured so far survives an interrupted bench
            with open(partial, "a") as f:
                f.write(json.dumps({"n": n, "run": name, **runs[name]}) + "\n")
    b, a = runs["before_no_new"], runs["after_no_new"]
    return {"n": n, "new_per_night": new, "runs": runs,
            "speedup_no_new": round(b["wall_s"] / a["wall_s"], 2),
            "seconds_per_row": {k: round(v["wall_s"] / v["rows"], 6) for k, v in runs.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="corpus sizes, comma-separated (default 10000,100000)")
    p.add_argument("--new-fraction", type=float, default=0.01, help="share of new files in a night (default 0.01; 0: nothing-new nights only)")
    p.add_argument("--work", default="/tmp/lanser-bench-scale", help="where corpora and output roots are built")
    p.add_argument("--json", default="bench/out/scale.json", help="where to write the figures")
    p.add_argument("--shards", type=int, default=None, help="also run the nothing-new night with the caches in this many shards "
                   "(cache.shards; default 8, 0: not)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--rehash", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one, a.out, a.rehash, a.shards)))
        return 0
    sizes = sorted(int(s) for s in a.sizes.split(","))
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    partial = a.json + ".runs.jsonl"
    if os.path.exists(partial):
        os.remove(partial)
    shards = 8 if a.shards is None else a.shards
    results = [measure(n, max(1, int(n * a.new_fraction)) if a.new_fraction > 0 else 0, a.work, partial, shards) for n in sizes]
    lo, hi = results[0], results[-1]
    slopes = {}
    for k in lo["runs"]:
        dn = hi["n"] - lo["n"]
        slopes[k] = {
            "seconds_per_row": round((hi["runs"][k]["wall_s"] - lo["runs"][k]["wall_s"]) / dn, 7) if dn else None,
            "driver_rss_bytes_per_row": round((hi["runs"][k]["driver_peak_rss_mib"] - lo["runs"][k]["driver_peak_rss_mib"]) * 2**20 / dn, 1) if dn else None,
            "object_store_bytes_per_row": round((hi["runs"][k]["object_store_peak_mib"] - lo["runs"][k]["object_store_peak_mib"]) * 2**20 / dn, 1) if dn else None,
        }
    r = hi["runs"]
    night = r.get("after_1pct_new")
    asr_new = night["stage_busy_seconds"].get("asr", 0.0) if night else 0.0
    # A first run reads every file (at least run 1's wall: everything but ASR and scoring)
    # and transcribes every file (at least N times the ASR seconds a new file took in run 4,
    # over the ASR actors working at once); the larger of the two bounds it from below.
    from labeler.config import load_config

    conc = load_config(CONFIG, {}).asr.concurrency
    asr_actors = max(conc) if isinstance(conc, (tuple, list)) else conc
    asr_per_file = asr_new / night["transcribed"] if night and night["transcribed"] else 0.0
    first_lower_bound = round(max(r["before_no_new"]["wall_s"], hi["n"] * asr_per_file / asr_actors), 1)
    goals = {
        "no_new_reads_no_audio": r["after_no_new"]["audio_files_read"] == 0,
        "no_new_speedup": hi["speedup_no_new"], "no_new_speedup_ge_10": hi["speedup_no_new"] >= 10,
        "driver_rss_bytes_per_source_after": slopes["after_no_new"]["driver_rss_bytes_per_row"],
        "driver_rss_lt_1KiB_per_source": (slopes["after_no_new"]["driver_rss_bytes_per_row"] or 0) < 1024,
        "night_1pct_wall_s": night and night["wall_s"], "first_run_lower_bound_s": first_lower_bound,
        "new_audio_asr_busy_s": round(asr_new, 2), "asr_busy_s_per_new_file": round(asr_per_file, 3),
        "night_1pct_le_5pct_first_plus_asr": night and night["wall_s"] <= 0.05 * first_lower_bound + asr_new,
        "at_n": hi["n"],
    }
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "config": CONFIG, "sizes": results,
              "slopes": slopes, "goals": goals}
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"{'N':>8} {'run':<16} {'wall s':>8} {'rows/s':>9} {'read':>7} {'driver MiB':>10} {'store MiB':>9}")
    for res in results:
        for k, v in res["runs"].items():
            print(f"{res['n']:>8} {k:<16} {v['wall_s']:>8} {v['rows_per_s']:>9} {v['audio_files_read']:>7} "
                  f"{v['driver_peak_rss_mib']:>10} {v['object_store_peak_mib']:>9}")
    print(f"no new audio at N={hi['n']}: {hi['speedup_no_new']}x faster than before (goal >= 10x); "
          f"driver RSS slope {goals['driver_rss_bytes_per_source_after']} B/source (goal < 1024)")
    if night:
        print(f"1% new: {night['wall_s']} s against 5% of >= {first_lower_bound} s + {goals['new_audio_asr_busy_s']} s ASR: "
              f"{'met' if goals['night_1pct_le_5pct_first_plus_asr'] else 'NOT met'}")
    print(f"figures: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
