"""``lanser-train`` end to end in subprocesses: shipped configs, errors, kill and resume."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainer_testlib import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "trainer" / "configs").glob("*.yaml"))


def _cli(args, env=None, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def _ray_env(ray_local):
    return {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_starts_with_its_command_and_validates(path):
    from trainer.config import load_config

    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"lanser-train " in first and f"--config trainer/configs/{path.name}" in first
    command = first.split("lanser-train ", 1)[1].split()[0]
    cfg = load_config(command, str(path))
    assert cfg.output_dir


def test_invalid_config_exits_2_with_every_problem_on_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("# lanser-train pretrain --config bad.yaml\ndata: {kind: labels, root: x, taxonomy: ekman}\ntrain: {epochs: -1}\n")
    result = _cli(["pretrain", "--config", str(path), "--set", "model.pooling=max", "--num-workers", "0"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "4 problems" in lines[0], result.stderr
    for field in ("output_dir: required", "train.epochs", "model.pooling", "scaling.num_workers"):
        assert field in lines[0]


def test_a_path_that_is_not_the_claimed_corpus_fails_with_one_line(ray_local, tmp_path):
    (tmp_path / "clips").mkdir()
    result = _cli(
        ["finetune", "--set", "data.kind=ravdess", "--set", f"data.path={tmp_path / 'clips'}", "--output-dir", str(tmp_path / "out"), "--set", "progress=false"],
        env=_ray_env(ray_local),
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lanser-train: error:") and "does not look like RAVDESS" in last and "Actor_01" in last


def test_console_and_report_number_epochs_alike_and_no_progress_hides_the_bars(ray_local, ravdess_root, tmp_path):
    """A 3-epoch fine-tune through the CLI with --no-progress: the best epoch on the console
    is report.json's best_checkpoint.epoch (both from 1), and the output holds no Ray Data
    progress bar and no false "no available CPUs" warning."""
    out = tmp_path / "ft"
    config = tiny_train_config(
        data={"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", "test_groups": ["Actor_07", "Actor_08"], "val_groups": ["Actor_06"]},
        train={"epochs": 3},
        output_dir=str(out),
    )
    del config["progress"]  # the flag, not the config, turns the bars off here
    path = tmp_path / "finetune.yaml"
    path.write_text(f"# lanser-train finetune --config {path}\n" + yaml.safe_dump(config))
    env = {**_ray_env(ray_local), "RAY_DEDUP_LOGS": "0"}  # every worker line as it is
    result = _cli(["finetune", "--config", str(path), "--no-progress"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    best = report["best_checkpoint"]
    summary = re.search(r"finetune done: (\d+) epochs, best val_ua (\d\.\d+) \(epoch (\d+)\)", result.stdout)
    assert summary, result.stdout[-3000:]
    assert int(summary[3]) == best["epoch"] and summary[2] == f"{best['value']:.3f}"
    assert int(summary[1]) == report["epochs_completed"] == 3 and report["epoch_base"] == 1
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and report["attempts"][0]["start_epoch"] == 1
    assert history[best["epoch"] - 1]["val_ua"] == best["value"]
    assert best["path"].endswith(f"checkpoint_epoch_{best['epoch']:04d}")
    # rank 0's line for that epoch shows the same score
    line = re.search(rf"\[finetune\] epoch {best['epoch']}/3 step \d+ .*? val_ua (\d\.\d+) ", output)
    assert line and line[1] == f"{best['value']:.3f}", output[-3000:]
    # Ray Data's progress bars: tqdm bars, or their logged form when the output is not a terminal
    for mark in ("Running Dataset", "Total Progress", "%|"):
        assert mark not in output, f"{mark!r} in the output:\n" + output[-3000:]
    assert "does not have any available CPUs" not in output, output[-3000:]


def test_killed_pretraining_resumes_from_its_checkpoint(ray_local, weak_corpus, tmp_path):
    """SIGKILL the CLI once a checkpoint is committed, rerun the same command, and check the
    run continued from the saved epoch and step rather than from zero."""
    out = tmp_path / "run"
    config = tiny_train_config(
        data={"kind": "labels", "root": weak_corpus["root"], "taxonomy": "ekman", "min_confidence": 0.4, "val_fraction": 0.25},
        train={"epochs": 5},
        output_dir=str(out),
        name="resumable",
    )
    path = tmp_path / "pretrain.yaml"
    path.write_text(f"# lanser-train pretrain --config {path}\n" + yaml.safe_dump(config))
    command = [sys.executable, "-m", "trainer", "pretrain", "--config", str(path)]
    env = _ray_env(ray_local)
    snapshot = out / "checkpoints" / "resumable" / "checkpoint_manager_snapshot.json"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not snapshot.exists():
            assert first.poll() is None, "the first run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s:\n" + (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and anything it started in its session
        first.wait()
        log.close()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()
    saved = {json.loads(Path(p).read_text())["epoch"] for p in glob.glob(str(out / "checkpoints" / "resumable" / "checkpoint_epoch_*" / "meta.json"))}
    assert saved and max(saved) < 5  # epochs count from 1: killed before the 5th and last

    second = _cli(["pretrain", "--config", str(path)], env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "pretrain done: 5 epochs" in second.stdout
    report = json.loads((out / "report.json").read_text())
    first_try, resumed = report["attempts"][0], report["attempts"][-1]
    assert first_try["start_epoch"] == 1 and first_try["resumed_from"] is None
    assert report["resumed"] and resumed["resumed_from"] is not None
    assert resumed["start_epoch"] >= 2 and resumed["start_epoch"] - 1 in saved
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]  # every epoch exactly once, none redone
    assert all(h["attempt"] == (0 if h["epoch"] < resumed["start_epoch"] else len(report["attempts"]) - 1) for h in history)
    before = history[resumed["start_epoch"] - 2]["global_step"]  # the epoch before it (history[0] is epoch 1)
    assert resumed["start_global_step"] == before > 0  # the optimizer step count carried over
    steps = [h["global_step"] for h in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
