"""Pretraining on Ray Train with Ray Data ingestion, on the synthetic weak-labels corpus."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from trainer_testlib import WEAK_CLASSES, tiny_train_config


def test_pretraining_learns_audible_classes_from_weak_labels(pretrained_run, weak_corpus):
    cfg, report = pretrained_run
    expect = weak_corpus["expect"]
    counts = report["data"]["counts"]
    # abstained and error rows never reach training; low-confidence weak labels are filtered
    assert counts["abstained"] == expect["abstained"] and counts["error"] == expect["error"]
    assert counts["below_min_confidence"] == expect["low_confidence"]
    assert counts["train"] + counts["val"] == expect["labeled_ok"] + expect["missing_file"]
    assert report["attempts"][0]["world_size"] == 2 and report["epochs_completed"] == cfg.train.epochs
    history = report["history"]
    assert [h["epoch"] for h in history] == list(range(1, cfg.train.epochs + 1))  # epoch 1 is the first pass
    # the clip deleted after labeling is counted every epoch, and learned from never
    assert all(h["skipped_unreadable"] == expect["missing_file"] for h in history)
    assert all(h["train_rows"] + h["val_rows"] + h["skipped_unreadable"] <= counts["train"] + counts["val"] for h in history)
    chance = 1 / len(WEAK_CLASSES)
    best = report["best_checkpoint"]
    assert best["value"] == max(h["val_ua"] for h in history)
    assert best["value"] >= 0.8 > 3 * chance, history
    assert history[-1]["val_wa"] >= 0.75, history[-1]
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    # the report file is the returned report
    with open(os.path.join(cfg.output_dir, "report.json")) as f:
        assert json.load(f)["best_checkpoint"] == best


def test_best_checkpoint_is_kept_and_reproduces_its_validation_score(pretrained_run, ray_local):
    from trainer.checkpoint import load_model
    from trainer.evaluate import evaluate_rows
    from trainer.ingest import prepare_data

    cfg, report = pretrained_run
    kept = sorted(glob.glob(os.path.join(report["run_path"], "checkpoint_epoch_*")))
    assert report["best_checkpoint"]["path"] in kept and report["latest_checkpoint"] in kept
    assert len(kept) <= cfg.checkpoint.num_to_keep + 1  # the best ones, plus the latest for resuming
    model, meta = load_model(cfg.output_dir)  # a run directory resolves to its best checkpoint
    assert meta["epoch"] == report["best_checkpoint"]["epoch"] and meta["label_names"] == report["label_names"]
    assert model.head.out_features == 7  # the ekman head, though the corpus uses 4 of its labels
    # Batch inference with the best checkpoint on the validation split scores what training measured.
    result = evaluate_rows(report["best_checkpoint"]["path"], prepare_data(cfg.data), split="val", cpus=0.5, data_cpus=0.5)
    history = {h["epoch"]: h for h in report["history"]}
    assert result["unreadable"] + result["scored"] == report["data"]["counts"]["val"]
    assert abs(result["metrics"]["ua"] - history[meta["epoch"]]["val_ua"]) <= 0.1
    cm = np.array(result["metrics"]["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum() == result["scored"]


def test_soft_label_training_runs_and_lowers_its_loss(ray_local, weak_corpus, tmp_path):
    from trainer.config import build_config
    from trainer.jobs import pretrain

    cfg = build_config("pretrain", tiny_train_config(
        # Features cached in the object store: this test is about the loss, the streaming path is tested above.
        data={"kind": "labels", "root": weak_corpus["root"], "taxonomy": "ekman", "min_confidence": 0.4, "val_fraction": 0.25, "cache_features": True},
        train={"epochs": 5, "label_mode": "soft", "soft_temperature": 0.5},
        output_dir=str(tmp_path),
    ))
    report = pretrain(cfg)
    losses = [h["train_loss"] for h in report["history"]]
    assert report["config"]["train"]["label_mode"] == "soft" and len(losses) == 5
    assert losses[-1] < 0.8 * losses[0], losses
    assert report["history"][-1]["val_ua"] > 1 / len(WEAK_CLASSES)


@pytest.mark.gpu
def test_gpu_pretraining_uses_mixed_precision(ray_local, weak_corpus, tmp_path):
    import torch

    from trainer.config import build_config
    from trainer.jobs import pretrain

    if not ray_local.cluster_resources().get("GPU"):
        pytest.skip("the session's Ray cluster has no GPU resource")
    cfg = build_config("pretrain", tiny_train_config(
        data={"kind": "labels", "root": weak_corpus["root"], "taxonomy": "ekman", "min_confidence": 0.4, "val_fraction": 0.25},
        train={"epochs": 4},
        scaling={"use_gpu": True, "cpus_per_worker": 0.5},
        output_dir=str(tmp_path),
    ))
    report = pretrain(cfg)
    attempt = report["attempts"][0]
    assert attempt["device"] == "cuda"
    assert attempt["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert report["best_checkpoint"]["value"] > 2 / len(WEAK_CLASSES)
