"""Fine-tuning, the label-efficiency sweep, evaluation and embedding export, end to end on a
RAVDESS-layout corpus of synthetic clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from trainer_testlib import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
SPLIT = {"test_groups": ["Actor_07", "Actor_08"], "val_groups": ["Actor_06"]}


@pytest.fixture(scope="module")
def sweep_run(pretrained_run, ravdess_root, tmp_path_factory):
    from trainer.config import build_config
    from trainer.sweep import sweep

    _, pre = pretrained_run
    cfg = build_config("sweep", tiny_train_config(
        data={"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", **SPLIT},
        init_checkpoint=pre["best_checkpoint"]["path"],
        freeze_encoder=True,  # the pretrained arm is a linear probe on the weak-label encoder
        fractions=[0.05, 1.0],
        optim={"lr": 0.02},  # a new head on a frozen encoder needs a livelier rate than the tiny default
        train={"epochs": 15},  # cached features: an epoch costs a fraction of a second
        output_dir=str(tmp_path_factory.mktemp("sweep")),
    ))
    return cfg, sweep(cfg)


def test_sweep_compares_pretrained_and_scratch_at_each_fraction(sweep_run, pretrained_run):
    cfg, result = sweep_run
    with open(os.path.join(cfg.output_dir, "sweep.json")) as f:
        written = json.load(f)
    assert written["results"] == result["results"]
    rows = {(r["fraction"], r["arm"]): r for r in written["results"]}
    assert set(rows) == {(f, a) for f in (0.05, 1.0) for a in ("pretrained", "scratch")}
    data = written["data"]
    assert data["dropped_unmapped"] == {"calm": 32, "fearful": 32}  # no iemocap4 class for them
    assert data["split_groups"]["test"] == ["Actor_07", "Actor_08"] and data["split_groups"]["val"] == ["Actor_06"]
    full_train = data["splits"]["train"]
    assert full_train == 5 * 4 * 4  # 5 training actors x 4 mapped emotions x 4 clips
    for arm in ("pretrained", "scratch"):
        assert rows[(1.0, arm)]["train_rows"] == full_train
        assert rows[(0.05, arm)]["train_rows"] == 4  # class-stratified: one clip of each class
    for r in rows.values():
        assert r["test_rows"] == 2 * 4 * 4 and 0 <= r["test_ua"] <= 1 and 0 <= r["test_macro_f1"] <= 1
        arm_report = json.loads(Path(r["report"]).read_text())
        assert arm_report["test"]["metrics"]["ua"] == r["test_ua"]
        assert (arm_report["init_checkpoint"] is not None) == (r["arm"] == "pretrained")
    # The weak-label encoder separates the audible classes: its linear probe is well above chance.
    assert rows[(1.0, "pretrained")]["test_ua"] >= 0.75, rows

    from matplotlib import image

    png = image.imread(result["plot"])
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 300
    assert png[..., :3].std() > 0.05  # not a blank canvas


def test_linear_probe_keeps_the_pretrained_encoder_and_trains_a_new_head(sweep_run, pretrained_run):
    import torch

    from trainer.checkpoint import load_model

    cfg, result = sweep_run
    probe_dir = os.path.dirname(next(r["report"] for r in result["results"] if r["arm"] == "pretrained" and r["fraction"] == 1.0))
    probe, meta = load_model(probe_dir)
    pre, pre_meta = load_model(pretrained_run[1]["best_checkpoint"]["path"])
    assert meta["label_names"] == ["neutral", "happy", "sad", "angry"] and pre_meta["taxonomy"]["name"] == "ekman"
    assert probe.head.out_features == 4 and pre.head.out_features == 7
    for (name, a), (_, b) in zip(probe.encoder.state_dict().items(), pre.encoder.state_dict().items()):
        assert torch.equal(a, b), name


def test_evaluate_scores_a_checkpoint_and_exports_embeddings(sweep_run, pretrained_run, ravdess_root, ray_local, tmp_path):
    from trainer.config import build_config
    from trainer.evaluate import evaluate

    _, result = sweep_run
    probe_dir = os.path.dirname(next(r["report"] for r in result["results"] if r["arm"] == "pretrained" and r["fraction"] == 1.0))
    cfg = build_config("evaluate", {
        "checkpoint": probe_dir,
        "data": {"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", **SPLIT},
        "split": "test",
        "embeddings": True,
        "inference": {"cpus": 0.5, "data_cpus": 0.5},
        "output_dir": str(tmp_path / "eval"),
        "progress": False,
    })
    report = evaluate(cfg)
    arm = json.loads(Path(probe_dir, "report.json").read_text())
    assert report["metrics"] == arm["test"]["metrics"]  # same checkpoint, same clips: same scores
    cm = np.array(report["metrics"]["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == report["scored"] == 32
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["metrics"]["wa"] == report["metrics"]["wa"]
    table = pads.dataset(report["embeddings"], format="parquet").to_table()
    emb_type = table.schema.field("embedding").type
    assert pa.types.is_list(emb_type) and emb_type.value_type == pa.float32()
    assert table.num_rows == 32 and set(len(e) for e in table.column("embedding").to_pylist()) == {32}
    assert sorted(table.column("utt_id").to_pylist())[0].endswith("-07")  # Actor_07's clips are in the test split


def test_cli_exports_pretrained_encoder_embeddings_for_another_taxonomy(pretrained_run, ravdess_root, ray_local, tmp_path):
    """The ekman-pretrained encoder, probed on iemocap4-labeled clips: no metrics (the heads
    differ), embeddings for every clip."""
    import yaml

    pre_cfg, _ = pretrained_run
    config = {
        "checkpoint": pre_cfg.output_dir,
        "data": {"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", **SPLIT},
        "split": "all",
        "inference": {"cpus": 0.5, "data_cpus": 0.5},
        "output_dir": str(tmp_path / "probe"),
        "progress": False,
    }
    path = tmp_path / "evaluate.yaml"
    path.write_text(f"# lanser-train evaluate --config {path}\n" + yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, "-m", "trainer", "evaluate", "--config", str(path), "--embeddings"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "probe" / "evaluation.json").read_text())
    assert report["metrics"] is None and "ekman" in report["metrics_skipped"]
    table = pads.dataset(str(tmp_path / "probe" / "embeddings"), format="parquet").to_table()
    assert table.num_rows == 8 * 4 * 4 and table.column("label").null_count == 0
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    labels = np.array(table.column("label").to_pylist())
    # Embeddings carry the class: each clip's nearest other clip mostly shares its label.
    dist = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert np.mean(labels[dist.argmin(1)] == labels) >= 0.75
