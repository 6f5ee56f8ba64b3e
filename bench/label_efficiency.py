"""Label efficiency, end to end and offline: does weak-label pretraining help when human labels
are few? One command, every step through the real tools:

    .venv/bin/python -m bench.label_efficiency [--per-emotion 125] [--seeds 0,1,2] [--fractions 0.05,0.25,1]

1. **synthesize** (``bench/efficiency_corpus.py``, espeak-ng): an *unlabeled* corpus of
   ``4 x --per-emotion`` clips whose words and prosody both follow one of four emotions
   (neutral, happy, sad, angry), in voices of their own; and a *labeled* corpus in RAVDESS'
   layout (``--actors`` other voices x 4 emotions x 2 intensities x 2 statements x 2
   repetitions) whose two statements are lexically neutral, so its emotion is in the
   prosody only.
2. **label**: ``lanser-label label`` with the packaged offline models (labeler/configs/demo.yaml:
   Whisper tiny.en, the all-MiniLM-L6-v2 embedding scorer, ekman). The weak labels' accuracy
   against the synthesized emotion is measured (joy = happy, sadness = sad, anger = angry;
   any other label counts as wrong).
3. **pretrain**: ``lanser-train pretrain`` on the weak labels (ekman head).
4. **sweep**: ``lanser-train sweep`` on the RAVDESS-layout corpus (iemocap4; 4 actors held
   out for test, 2 for validation), pretrained (the weak-label model fine-tuned with a new
   class head) against from scratch (same model, features and schedule), at each fraction of
   the labeled training split, once per seed (the seed picks the fraction's clips and
   initializes and shuffles training).

Prints the table (test UA, mean +- sd over the seeds, and the paired difference) and the wall
time of each phase; writes ``<out>/label_efficiency.json`` (every number, the configs, the
machine and its load average), the sweep's PNG (``--png`` copies it, e.g. to
docs/label_efficiency.png) and everything the tools wrote under ``--out``. The same seeds write
the same corpora and pick the same clips; training on CPU is not bit-reproducible (Ray Data's
batch order and thread timing vary), hence the spread over seeds (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "labeler", "configs", "demo.yaml")
#: Weak (ekman) label -> the synthesized emotion it is right for.
WEAK_TO_EMOTION = {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry"}

#: Features and model of the demonstration: a compact log-mel ResNet small enough that 18
#: fine-tunes and the pretraining fit in 30 minutes on 2 cores.
FEATURES = {"n_mels": 40, "max_seconds": 3.0}
MODEL = {"channels": 8, "blocks": [1, 1, 1], "embed_dim": 64, "pooling": "meanstd", "dropout": 0.1}
SCALING = {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": "auto", "data_cpus": 1, "data_batch_size": 16}
#: The labeled corpus's held-out actors (RAVDESS Actor_NN) for test and validation.
TEST_ACTORS, VAL_ACTORS = 4, 2


def pretrain_config(labels_root: str, out: str, epochs: int) -> dict:
    """``lanser-train pretrain`` on the weak labels: hard top-1 labels of confidence >= 0.3
    (as trainer/configs/pretrain.yaml). No class weights: the labels the scorer gives a few
    clips (fear, disgust, surprise) are mostly its mistakes, and balancing would make them
    weigh most. The checkpoint kept is the one of lowest validation loss: the weak
    validation labels' UA averages over those noise classes too."""
    return {
        "data": {"kind": "labels", "root": labels_root, "taxonomy": "ekman", "min_confidence": 0.3, "val_fraction": 0.15, "cache_features": True},
        "features": FEATURES,
        "model": MODEL,
        "optim": {"lr": 0.003, "warmup_epochs": 1},
        "train": {"epochs": epochs, "batch_size": 16, "label_mode": "hard", "class_weighting": "none", "seed": 0},
        "scaling": SCALING,
        "checkpoint": {"num_to_keep": 1, "metric": "val_loss"},
        "output_dir": out,
        "name": "pretrain",
        "progress": False,
    }


def sweep_config(ravdess_root: str, actors: int, init: str, out: str, fractions: list[float], seeds: list[int], epochs: int,
                 probe: bool = False) -> dict:
    """``lanser-train sweep``: the last ``TEST_ACTORS`` actors are the test speakers, the
    ``VAL_ACTORS`` before them validation; the pretrained arm fine-tunes the whole
    pretrained model (a new class head), the scratch arm the same model from random weights.
    With ``probe`` the pretrained arm trains only the new head on the frozen encoder (a
    linear probe), at the livelier rate a new head needs (both arms get it)."""
    names = [f"Actor_{a:02d}" for a in range(1, actors + 1)]
    return {
        "data": {"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4",
                 "test_groups": names[-TEST_ACTORS:], "val_groups": names[-TEST_ACTORS - VAL_ACTORS:-TEST_ACTORS]},
        "init_checkpoint": init,
        "freeze_encoder": probe,
        "fractions": fractions,
        "seeds": seeds,
        "optim": {"lr": 0.02 if probe else 0.003, "warmup_epochs": 1},
        "train": {"epochs": epochs, "batch_size": 8},
        "scaling": SCALING,
        "checkpoint": {"num_to_keep": 1, "metric": "val_ua"},
        "output_dir": out,
        "name": "eff",
        "progress": False,
    }


def write_config(path: str, command: str, cfg: dict) -> str:
    import yaml

    with open(path, "w") as f:
        f.write(f"# lanser-train {command} --config {path}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cmd: list[str], log: str) -> None:
    """Run one of the project's CLIs, its output to ``log``; a failure stops the bench with the log's tail."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); {log} ends:\n{tail}")


def weak_label_accuracy(labels_root: str, truth: dict[str, str]) -> dict:
    """The newest committed labeling run's labels against the synthesized emotions."""
    import pyarrow.dataset as pads

    runs = sorted(os.listdir(os.path.join(labels_root, "runs")))
    manifest = json.load(open(os.path.join(labels_root, "runs", runs[-1])))
    table = pads.dataset(os.path.join(labels_root, "labels"), format="parquet", partitioning="hive").to_table(
        columns=["uri", "label", "status", "confidence", "run_id"])
    rows = [r for r in table.to_pylist() if r["run_id"] == manifest["run_id"]]
    labeled = [r for r in rows if r["status"] == "labeled"]
    right = [r for r in labeled if WEAK_TO_EMOTION.get(r["label"]) == truth[os.path.abspath(r["uri"])]]
    kept = [r for r in labeled if (r["confidence"] or 0) >= 0.3]
    kept_right = [r for r in kept if WEAK_TO_EMOTION.get(r["label"]) == truth[os.path.abspath(r["uri"])]]
    return {
        "run_id": manifest["run_id"],
        "clips": len(truth),
        "rows": len(rows),
        "labeled": len(labeled),
        "accuracy": round(len(right) / max(1, len(labeled)), 4),
        "kept_for_pretraining": len(kept),
        "accuracy_of_kept": round(len(kept_right) / max(1, len(kept)), 4),
        "confusion": dict(sorted(Counter(f"{truth[os.path.abspath(r['uri'])]}->{r['label']}" for r in labeled).items())),
    }


def table_lines(summary: list[dict]) -> list[str]:
    """The markdown table: per fraction, training clips, both arms' test UA (mean +- sd
    [min-max]) and the paired difference with how many seeds pretraining won."""
    def cell(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['sd']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"

    lines = ["| labels used | training clips | scratch UA | pretrained UA | pretrained - scratch | seeds won |", "|---|---|---|---|---|---|"]
    for row in summary:
        d = row["difference_ua"]
        rows = "/".join(str(n) for n in row["train_rows"])
        lines.append(f"| {row['fraction']:.0%} | {rows} | {cell(row['scratch_ua'])} | {cell(row['pretrained_ua'])} | "
                     f"{d['mean']:+.3f} ± {d['sd']:.3f} | {d['pretrained_better']}/{d['n']} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.label_efficiency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/out/label_efficiency", help="working folder (emptied first unless --resume)")
    p.add_argument("--per-emotion", type=int, default=125, help="unlabeled clips per emotion (4 emotions)")
    p.add_argument("--actors", type=int, default=12, help="actors (voices) of the RAVDESS-layout corpus; 4 test, 2 validation")
    p.add_argument("--fractions", default="0.05,0.25,1", help="shares of the labeled training split")
    p.add_argument("--seeds", default="0,1,2", help="fine-tune seeds (comma-separated)")
    p.add_argument("--corpus-seed", type=int, default=0, help="seed of the voices, sentences and prosody")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--probe", action="store_true", help="the pretrained arm is a linear probe on the frozen encoder (sweep in <out>/sweep-probe)")
    p.add_argument("--png", default=None, help="also copy the plot here (e.g. docs/label_efficiency.png)")
    p.add_argument("--resume", action="store_true", help="keep --out: completed labeling, pretraining and fine-tunes are reused")
    args = p.parse_args(argv)
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        p.error("--fractions and --seeds take comma-separated numbers")
    if args.actors < TEST_ACTORS + VAL_ACTORS + 1:
        p.error(f"--actors must be at least {TEST_ACTORS + VAL_ACTORS + 1} ({TEST_ACTORS} test, {VAL_ACTORS} validation, 1 training)")

    from bench.efficiency_corpus import clip_rows, split_voices, write_ravdess, write_unlabeled
    from trainer.runtime import usable_cores

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not args.resume:
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    env_note = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
    for k, v in env_note.items():
        os.environ.setdefault(k, v)
    phases, loads = {}, {"start": os.getloadavg()}
    started = time.time()

    def phase(name: str, t0: float) -> None:
        phases[name] = round(time.time() - t0, 1)
        loads[name] = os.getloadavg()
        print(f"[{name}] {phases[name]:.1f} s (load average {loads[name][0]:.1f} {loads[name][1]:.1f} {loads[name][2]:.1f})", flush=True)

    t0 = time.time()
    actors, pool = split_voices(args.corpus_seed, args.actors)
    unlabeled_dir, ravdess_root = os.path.join(out, "unlabeled"), os.path.join(out, "RAVDESS")
    if not (args.resume and os.path.exists(os.path.join(out, "corpus.json"))):
        unlabeled = write_unlabeled(unlabeled_dir, args.per_emotion, pool, args.corpus_seed)
        labeled = write_ravdess(ravdess_root, actors, args.corpus_seed + 1)
        with open(os.path.join(out, "corpus.json"), "w") as f:
            json.dump({"unlabeled": clip_rows(unlabeled), "labeled": clip_rows(labeled)}, f)
    with open(os.path.join(out, "corpus.json")) as f:
        corpus = json.load(f)
    truth = {os.path.abspath(c["path"]): c["emotion"] for c in corpus["unlabeled"]}
    phase("synthesize", t0)

    t0 = time.time()
    labels_root = os.path.join(out, "labels")
    if not (args.resume and os.path.isdir(os.path.join(labels_root, "runs"))):
        run([sys.executable, "-m", "labeler", "label", "--config", DEMO, "--input", unlabeled_dir, "--output", labels_root, "--no-progress"],
            os.path.join(out, "label.log"))
    weak = weak_label_accuracy(labels_root, truth)
    phase("label", t0)
    print(f"weak labels: {weak['labeled']} of {weak['clips']} clips labeled, accuracy {weak['accuracy']:.1%} against the synthesized emotion; "
          f"{weak['kept_for_pretraining']} with confidence >= 0.3 ({weak['accuracy_of_kept']:.1%} right)", flush=True)

    t0 = time.time()
    pre_out = os.path.join(out, "pretrain")
    pre_yaml = write_config(os.path.join(out, "pretrain.yaml"), "pretrain", pretrain_config(labels_root, pre_out, args.pretrain_epochs))
    run([sys.executable, "-m", "trainer", "pretrain", "--config", pre_yaml], os.path.join(out, "pretrain.log"))
    with open(os.path.join(pre_out, "report.json")) as f:
        pre_report = json.load(f)
    phase("pretrain", t0)

    t0 = time.time()
    kind = "sweep-probe" if args.probe else "sweep"
    sweep_out = os.path.join(out, kind)
    sweep_yaml = write_config(os.path.join(out, f"{kind}.yaml"), "sweep",
                              sweep_config(ravdess_root, args.actors, pre_out, sweep_out, fractions, seeds, args.finetune_epochs, args.probe))
    run([sys.executable, "-m", "trainer", "sweep", "--config", sweep_yaml], os.path.join(out, f"{kind}.log"))
    with open(os.path.join(sweep_out, "sweep.json")) as f:
        result = json.load(f)
    phase("sweep", t0)

    total = round(time.time() - started, 1)
    lines = table_lines(result["summary"])
    print("\n".join(["", f"test UA on {result['data']['splits']['test']} clips of {TEST_ACTORS} held-out actors, "
                     f"{len(seeds)} seeds (mean ± sd [min-max]); chance 0.25"] + lines + [""]))
    print(f"wall time {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())}); "
          f"{usable_cores()} usable cores; load average at the end {os.getloadavg()[0]:.1f}")
    if args.png:
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        shutil.copyfile(result["plot"], args.png)
    report = {
        "benchmark": "label_efficiency",
        "command": "python -m bench.label_efficiency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "corpus": {"unlabeled_clips": len(corpus["unlabeled"]), "labeled_clips": len(corpus["labeled"]), "actors": args.actors,
                   "seed": args.corpus_seed},
        "weak_labels": weak,
        "pretrain": {"best_checkpoint": pre_report["best_checkpoint"], "data": pre_report.get("data"), "history": pre_report.get("history")},
        "sweep": {"data": result["data"], "summary": result["summary"], "results": result["results"], "plot": result["plot"]},
        "table": lines,
        "wall_time_s": total,
        "phases_s": phases,
        "load_average": loads,
        "machine": {"usable_cores": usable_cores(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "configs": {"pretrain": pre_yaml, "sweep": sweep_yaml},
        "probe": args.probe,
    }
    name = "label_efficiency_probe.json" if args.probe else "label_efficiency.json"
    with open(os.path.join(out, name), "w") as f:
        json.dump(report, f, indent=2)
    print(f"{os.path.join(out, name)}, {result['plot']}" + (f", {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
