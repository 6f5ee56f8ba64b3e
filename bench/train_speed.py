"""Training speed on a laptop: seconds per epoch per 1,000 clips of about 4 s, the trainer's
laptop defaults against its old behaviour, in the same run.

    .venv/bin/python -m bench.train_speed [--clips 100] [--epochs 3] [--variants old,new,new-model-old-runtime]

The workload: ``--clips`` clips of real speech (Debian's Asterisk prompts of 3-5 s, one
voice, 8 kHz, resampled to 16 kHz and written as WAV, each with its own level), listed in a
manifest with one of four iemocap4 labels each and split 95/5 into train/val. Every variant
trains on the same files through the real job (``trainer.jobs.finetune`` from scratch:
Ray Data decode + log-mel tasks, Ray Train with one CPU worker, checkpoints every epoch) on
a local Ray with 2 CPUs, one after the other:

- **old**: what the trainer did before: ``model.channels: 32``, ``features.max_seconds: 6``,
  one torch thread (``int(cpus_per_worker)``), no feature cache (decode + log-mel every
  epoch), Ray's default prefetch of 1 batch, glibc's default allocator policy.
- **new**: the laptop defaults of ``trainer/configs/pretrain.yaml``: ``channels: 16``,
  ``max_seconds: 4``, ``torch_threads: auto``, ``data.cache_features: true`` (whole-clip
  log-mel computed once, a fresh random crop per epoch), ``prefetch_batches: 2``,
  ``keep_freed_memory: true``.
- **new-model-old-runtime**: the new model and crop with the old runtime settings (what
  the runtime fixes alone are worth is old-runtime/new).

The figure per variant is the median of the epochs after the first (``history[].epoch_seconds``:
a training pass plus the small validation pass), divided by the training clips and times
1,000; the first epoch and the whole wall time (Ray Train start, the feature cache) are
reported too. Ratios are old / new. The machine's load average (1 minute) before and after
each variant is stored: on a shared machine, other work slows the multi-threaded variant
most. Results go to ``bench/out/train_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

SR = 16_000
LABELS = ["neutral", "happy", "sad", "angry"]

#: Settings of the old trainer (before the speed work), as config overrides.
OLD_RUNTIME = {"torch_threads": 1, "prefetch_batches": 1, "keep_freed_memory": False}
OLD_MODEL = {"channels": 32}
OLD_FEATURES = {"max_seconds": 6.0}


def build_workload(directory: str, clips: int, seed: int = 0) -> tuple[str, float]:
    """Write ``clips`` WAV files and their manifest; returns (manifest path, mean seconds)."""
    import soundfile as sf

    from bench.speech import asterisk_prompts
    from labeler.audio import load

    prompts = asterisk_prompts(min_s=3.0, max_s=5.0)
    if not prompts:
        raise SystemExit("no Asterisk prompts of 3-5 s found (make debs)")
    rng = np.random.default_rng(seed)
    waves = [load(p.path)[0].waveform for p in prompts]  # decoded and resampled to 16 kHz once
    rows, seconds = [], []
    for i in range(clips):
        wave = waves[i % len(waves)] * float(rng.uniform(0.5, 1.0))
        path = os.path.join(directory, f"clip{i:05d}.wav")
        sf.write(path, wave, SR, subtype="PCM_16")
        seconds.append(wave.size / SR)
        split = "val" if i % 20 == 19 else "train"
        rows.append(f"{path},{LABELS[int(rng.integers(len(LABELS)))]},spk{i % 10},{split}")
    manifest = os.path.join(directory, "manifest.csv")
    with open(manifest, "w") as f:
        f.write("uri,label,speaker,split\n" + "\n".join(rows) + "\n")
    return manifest, float(np.mean(seconds))


def laptop_defaults() -> dict:
    """The training sections of trainer/configs/pretrain.yaml (the laptop defaults)."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainer", "configs", "pretrain.yaml")
    with open(path) as f:
        cfg = yaml.safe_load(f)
    return {k: cfg[k] for k in ("features", "model", "optim", "train", "scaling")} | {"cache_features": cfg["data"].get("cache_features", False)}


def variant_config(name: str, manifest: str, out: str, epochs: int, base: dict) -> dict:
    features, model, scaling = dict(base["features"]), dict(base["model"]), dict(base["scaling"])
    cache = base["cache_features"]
    if name in ("old", "new-model-old-runtime"):
        scaling.update(OLD_RUNTIME)
        cache = False
    if name == "old":
        model.update(OLD_MODEL)
        features.update(OLD_FEATURES)
    train = {**base["train"], "epochs": epochs, "label_mode": "hard", "class_weighting": "none"}
    return {
        "data": {"kind": "manifest", "path": manifest, "taxonomy": "iemocap4", "cache_features": cache},
        "features": features,
        "model": model,
        "optim": base["optim"],
        "train": train,
        "scaling": scaling,
        "checkpoint": {"num_to_keep": 1, "metric": "val_loss"},
        "output_dir": out,
        "name": f"speed-{name}",
        "progress": False,
    }


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def run_variant(name: str, cfg_dict: dict) -> dict:
    from trainer.config import build_config
    from trainer.jobs import finetune

    cfg = build_config("finetune", cfg_dict)
    before = load1()
    t0 = time.time()
    report = finetune(cfg)
    wall = time.time() - t0
    history = report["history"]
    train_rows = history[0]["train_rows"]
    later = [h["epoch_seconds"] for h in history[1:]] or [history[0]["epoch_seconds"]]
    per_epoch = statistics.median(later)
    return {
        "variant": name,
        "model_channels": cfg.model.channels,
        "max_seconds": cfg.features.max_seconds,
        "torch_threads": report["attempts"][0].get("torch_threads"),
        "cache_features": cfg.data.cache_features,
        "prefetch_batches": cfg.scaling.prefetch_batches,
        "keep_freed_memory": cfg.scaling.keep_freed_memory,
        "train_clips": train_rows,
        "val_clips": history[0]["val_rows"],
        "epochs": len(history),
        "epoch_seconds": [h["epoch_seconds"] for h in history],
        "first_epoch_s_per_1000": round(history[0]["epoch_seconds"] / train_rows * 1000, 1),
        "s_per_epoch_per_1000_clips": round(per_epoch / train_rows * 1000, 1),
        "wall_time_s": round(wall, 1),
        "load1_before": before,
        "load1_after": load1(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=100, help="clips in the workload (figures are scaled per 1,000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (the first is reported apart)")
    p.add_argument("--variants", default="old,new,new-model-old-runtime", help="comma-separated: old, new, new-model-old-runtime")
    p.add_argument("--json", default="bench/out/train_speed.json")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - {"old", "new", "new-model-old-runtime"}
    if unknown or not variants:
        p.error(f"--variants: unknown {sorted(unknown)} (allowed: old, new, new-model-old-runtime)")

    import ray

    from trainer.runtime import usable_cores

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    base = laptop_defaults()
    results = []
    with tempfile.TemporaryDirectory(prefix="lanser-train-speed-") as tmp:
        manifest, mean_s = build_workload(tmp, args.clips)
        print(f"workload: {args.clips} clips, mean {mean_s:.2f} s; {usable_cores()} usable cores; load average {os.getloadavg()}", flush=True)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for name in variants:
                r = run_variant(name, variant_config(name, manifest, os.path.join(tmp, name), args.epochs, base))
                results.append(r)
                print(
                    f"{name:>22}: {r['s_per_epoch_per_1000_clips']:8.1f} s per epoch per 1,000 clips "
                    f"(channels {r['model_channels']}, crop {r['max_seconds']:g} s, {r['torch_threads']} threads, "
                    f"cache {r['cache_features']}; epochs {r['epoch_seconds']} s for {r['train_clips']} clips; "
                    f"load {r['load1_before']} -> {r['load1_after']})",
                    flush=True,
                )
        finally:
            ray.shutdown()
    by = {r["variant"]: r["s_per_epoch_per_1000_clips"] for r in results}
    ratios = {}
    if "old" in by and "new" in by:
        ratios["old_over_new"] = round(by["old"] / by["new"], 2)
        print(f"new defaults: {by['new']:.1f} s vs old {by['old']:.1f} s per epoch per 1,000 clips: {ratios['old_over_new']:.1f}x faster")
    if "new-model-old-runtime" in by and "new" in by:
        ratios["runtime_fixes_alone"] = round(by["new-model-old-runtime"] / by["new"], 2)
        print(f"runtime fixes alone (same model): {ratios['runtime_fixes_alone']:.1f}x")
    out = {
        "benchmark": "train_speed",
        "clips": args.clips,
        "mean_clip_seconds": round(mean_s, 2),
        "epochs": args.epochs,
        "machine": {"usable_cores": usable_cores(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "results": results,
        "ratios": ratios,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
