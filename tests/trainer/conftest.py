"""Fixtures for the trainer tests: a synthetic weak-labels corpus, a RAVDESS-like tree, and
one pretraining run (2 CPU workers on the session's local Ray) shared by the tests that
need a pretrained checkpoint."""

from __future__ import annotations

import os
import sys

import pytest

# The helpers beside this file (trainer_testlib) are imported by name from the tests here.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from trainer_testlib import EKMAN, WEAK_CLASSES, build_ravdess, build_weak_corpus, tiny_train_config  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _fast_train_controller():
    """Ray Train's controller polls its workers every 2 s by default; poll faster so the
    short test runs do not spend their time waiting. Propagated to the controller."""
    old = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.25"
    yield
    if old is None:
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
    else:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = old


@pytest.fixture(scope="session")
def weak_corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("weak"))
    expect = build_weak_corpus(root, WEAK_CLASSES, EKMAN, per_class=24, seed=0)
    return {"root": root, "expect": expect}


@pytest.fixture(scope="session")
def ravdess_root(tmp_path_factory):
    """8 actors; four iemocap4 emotions plus calm and fearful (dropped for iemocap4)."""
    root = str(tmp_path_factory.mktemp("ravdess") / "RAVDESS")
    return build_ravdess(root, actors=list(range(1, 9)), emotions=["neutral", "happy", "sad", "angry", "calm", "fearful"], per_emotion=4, seed=1)


@pytest.fixture(scope="session")
def pretrained_run(ray_local, weak_corpus, tmp_path_factory):
    """Hard-label pretraining on the weak corpus with 2 CPU workers (0.5 CPU each, so the
    decode + log-mel tasks keep the other CPU). Returns (config, report)."""
    from trainer.config import build_config
    from trainer.jobs import pretrain

    out = str(tmp_path_factory.mktemp("pretrain"))
    cfg = build_config("pretrain", tiny_train_config(
        data={"kind": "labels", "root": weak_corpus["root"], "taxonomy": "ekman", "min_confidence": 0.4, "val_fraction": 0.25},
        # 4 optimizer steps per epoch at batch 8 left some runs at 0.75 after 6 epochs; 8 steps
        # per epoch reach the classes in every run seen
        train={"epochs": 6, "batch_size": 4},
        scaling={"num_workers": 2},
        output_dir=out,
    ))
    return cfg, pretrain(cfg)
