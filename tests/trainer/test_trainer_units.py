"""Pure logic of the trainer: features, metrics, model pooling, losses, schedule, configs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from trainer.features import SAMPLE_RATE, FeatureSpec, fit_frames, log_mel, mel_filterbank
from trainer.metrics import confusion_matrix, summarize


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_log_mel_puts_a_tone_in_the_mel_band_around_its_frequency(freq):
    spec = FeatureSpec(n_mels=40, normalize="none")
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    feats = log_mel(0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32), spec)
    assert feats.shape == (40, 1 + SAMPLE_RATE // spec.hop)
    fb = mel_filterbank(40, spec.n_fft, spec.fmin, SAMPLE_RATE / 2)
    centers = (np.arange(fb.shape[1]) * SAMPLE_RATE / spec.n_fft)[fb.argmax(axis=1)]
    peak_band = int(np.median(feats.argmax(axis=0)))
    # the loudest band is one whose filter covers the tone (its centre within a band or two)
    assert abs(np.searchsorted(centers, freq) - peak_band) <= 1


def test_filterbank_covers_the_spectrum_without_gaps():
    fb = mel_filterbank(64, 400, 20.0, 8000.0)
    freqs = np.arange(fb.shape[1]) * SAMPLE_RATE / 400
    inside = (freqs > 60) & (freqs < 7800)
    assert (fb[:, inside].sum(axis=0) > 0).all()
    assert np.all(fb >= 0)


def test_utterance_mean_normalization_removes_the_level():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    quiet, loud = log_mel(x, FeatureSpec()), log_mel(4 * x, FeatureSpec())
    np.testing.assert_allclose(quiet, loud, atol=0.02)  # up to the log floor
    assert not np.allclose(log_mel(x, FeatureSpec(normalize="none")), log_mel(4 * x, FeatureSpec(normalize="none")))


def test_fit_frames_pads_and_crops_and_reports_real_length():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((8, 30)).astype(np.float32)
    padded, n = fit_frames(feats, 50, "start", rng)
    assert n == 30 and padded.shape == (8, 50) and not padded[:, 30:].any()
    np.testing.assert_array_equal(padded[:, :30], feats)
    cropped, n = fit_frames(feats, 10, "start", rng)
    assert n == 10
    np.testing.assert_array_equal(cropped, feats[:, :10])
    starts = set()
    for _ in range(40):
        crop, n = fit_frames(feats, 10, "random", rng)
        starts.add(next(s for s in range(21) if np.array_equal(feats[:, s : s + 10], crop)))
    assert len(starts) > 3  # random crops are real windows of the clip, at varying offsets


# --------------------------------------------------------------------------- metrics


def test_metrics_follow_their_definitions():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
    y_true[y_true == 3] = 2  # class 3 never occurs in the truth...
    y_pred[:5] = 3  # ...but is predicted a few times
    cm = confusion_matrix(y_true, y_pred, 5)  # class 4 occurs nowhere
    assert cm.sum() == 200 and cm[1, 2] == np.sum((y_true == 1) & (y_pred == 2))
    out = summarize(cm)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    assert out["ua"] == pytest.approx(np.mean(recalls))
    assert out["wa"] == pytest.approx(np.mean(y_true == y_pred))
    f1s = []
    for c in sorted(set(y_true) | set(y_pred)):
        tp = np.sum((y_true == c) & (y_pred == c))
        p = tp / max(1, np.sum(y_pred == c))
        r = tp / max(1, np.sum(y_true == c))
        f1s.append(0 if p + r == 0 else 2 * p * r / (p + r))
    assert out["macro_f1"] == pytest.approx(np.mean(f1s))
    assert out["per_class"]["4"]["support"] == 0


def test_confusion_matrix_rejects_out_of_range_classes():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


# --------------------------------------------------------------------------- model and losses


def test_pooling_ignores_padding_frames():
    import torch

    from trainer.model import ModelSpec, SERModel

    torch.manual_seed(0)
    for pooling in ("attentive", "meanstd"):
        model = SERModel(ModelSpec(n_mels=16, channels=4, blocks=(1, 1, 1), embed_dim=8, pooling=pooling), 3).eval()
        x = torch.randn(1, 16, 37)
        short = torch.cat([x, torch.zeros(1, 16, 27)], dim=-1)  # 64 frames
        long = torch.cat([x, torch.zeros(1, 16, 91)], dim=-1)  # 128 frames
        n = torch.tensor([37])
        with torch.no_grad():
            a, b = model.embed(short, n), model.embed(long, n)
            unmasked = model.embed(long, torch.tensor([128]))
        torch.testing.assert_close(a, b)  # same clip, different padding: same embedding
        assert not torch.allclose(a, unmasked)  # counting the padding as frames would change it
        assert a.shape == (1, 8) and model(short, n).shape == (1, 3)


def _loss_recipe(mode: str, temperature: float = 1.0, class_weights=None):
    import torch

    from trainer.config import CheckpointConfig, OptimConfig, TrainConfig
    from trainer.model import ModelSpec
    from trainer.recipe import RecipeConfig, SERTrainRecipe

    recipe = SERTrainRecipe(RecipeConfig(
        job="test", taxonomy={"name": "t", "version": "1"}, label_names=["a", "b", "c", "d"],
        model=ModelSpec(), features=FeatureSpec(), optim=OptimConfig(), checkpoint=CheckpointConfig(),
        train=TrainConfig(label_mode=mode, soft_temperature=temperature, label_smoothing=0.0),
    ))
    recipe.class_weights = None if class_weights is None else torch.tensor(class_weights)
    return recipe


def test_soft_loss_is_cross_entropy_to_temperature_scaled_scores():
    import torch
    import torch.nn.functional as F

    from trainer.recipe import soft_targets

    scores = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    sharp = soft_targets(scores, 0.5)
    expected = scores**2 / (scores**2).sum(dim=-1, keepdim=True)
    torch.testing.assert_close(sharp, expected)
    torch.testing.assert_close(soft_targets(scores, 1.0), scores)
    logits = torch.randn(2, 3)
    batch = {"label": torch.tensor([0, 2]), "ok": torch.tensor([True, True]), "target": scores}
    loss, _, _ = _loss_recipe("soft", 0.5)._loss(logits, batch)
    assert loss.item() == pytest.approx(-(sharp * F.log_softmax(logits, -1)).sum(-1).mean().item(), rel=1e-5)
    # its minimum, at logits = log(target), is the targets' entropy, not zero as with hard labels
    best, _, _ = _loss_recipe("soft", 0.5)._loss(torch.log(sharp), batch)
    assert best.item() == pytest.approx(-(sharp * torch.log(sharp)).sum(-1).mean().item(), rel=1e-5)


def test_unreadable_rows_do_not_count_in_the_loss():
    import torch
    import torch.nn.functional as F

    logits = torch.randn(3, 4)
    batch = {"label": torch.tensor([1, 2, 3]), "ok": torch.tensor([True, False, True]), "target": torch.zeros(3, 4)}
    loss, _, weight = _loss_recipe("hard")._loss(logits, batch)
    assert weight.tolist() == [1.0, 0.0, 1.0]
    assert loss.item() == pytest.approx(F.cross_entropy(logits[[0, 2]], torch.tensor([1, 3])).item(), rel=1e-5)
    weighted, _, _ = _loss_recipe("hard", class_weights=[1.0, 3.0, 1.0, 1.0])._loss(logits, batch)
    ce = F.cross_entropy(logits, batch["label"], reduction="none")
    assert weighted.item() == pytest.approx(((3 * ce[0] + ce[2]) / 4).item(), rel=1e-5)


def test_lr_schedule_warms_up_then_decays():
    from trainer.recipe import lr_factor

    f = [lr_factor(e, 10, 2) for e in range(10)]
    assert f[0] < f[1] < f[2] and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] > 0.05


def test_balanced_class_weights_equalize_class_mass():
    from trainer.jobs import class_weights

    counts = [10, 30, 0, 60]
    w = class_weights(counts)
    mass = [c * x for c, x in zip(counts, w) if c]
    assert max(mass) == pytest.approx(min(mass)) and w[2] == 1.0


# --------------------------------------------------------------------------- configs


def test_config_overrides_and_all_errors_at_once():
    from trainer.config import apply_override, build_config, parse_set
    from trainer.errors import ConfigError

    data = {"data": {"root": "x", "taxonomy": "ekman"}, "output_dir": "o"}
    for item in ["train.epochs=3", "scaling.use_gpu=true", "model.blocks=[1, 2]", "train.label_mode=soft"]:
        apply_override(data, *parse_set(item))
    cfg = build_config("pretrain", data)
    assert (cfg.train.epochs, cfg.scaling.use_gpu, cfg.model.blocks, cfg.train.label_mode) == (3, True, [1, 2], "soft")
    assert cfg.data.kind == "labels" and cfg.name == "pretrain"
    bad = {"data": {"root": "x", "taxonomy": "nope"}, "train": {"epochs": 0, "label_mode": "fuzzy"}, "scaling": {"num_workers": "two"}, "typo": 1}
    with pytest.raises(ConfigError) as err:
        build_config("pretrain", bad)
    fields = [p.split(":")[0] for p in err.value.problems]
    assert sorted(fields) == sorted(["data.taxonomy", "train.epochs", "train.label_mode", "scaling.num_workers", "typo", "output_dir"])
    assert "'nope'" in str(err.value) and "fuzzy" in str(err.value)


def test_finetune_data_kinds_are_validated():
    from trainer.config import build_config
    from trainer.errors import ConfigError

    cfg = build_config("finetune", {"data": {"kind": "iemocap", "path": "p", "test_groups": ["Session5"]}, "output_dir": "o"})
    assert cfg.data.taxonomy == "iemocap4" and cfg.data.test_groups == ["Session5"]
    with pytest.raises(ConfigError, match="data: .*'ravdes'"):
        build_config("finetune", {"data": {"kind": "ravdes", "path": "p"}, "output_dir": "o"})
    with pytest.raises(ConfigError, match=r"fractions: .*\[1.5\]"):
        build_config("sweep", {"data": {"kind": "ravdess", "path": "p"}, "output_dir": "o", "init_checkpoint": "c", "fractions": [0.1, 1.5]})
    with pytest.raises(ConfigError, match=r"seeds: .*\[0, 1, 0\]"):
        build_config("sweep", {"data": {"kind": "ravdess", "path": "p"}, "output_dir": "o", "init_checkpoint": "c", "seeds": [0, 1, 0]})
    with pytest.raises(ConfigError, match=r"seeds"):
        build_config("sweep", {"data": {"kind": "ravdess", "path": "p"}, "output_dir": "o", "init_checkpoint": "c", "seeds": []})


def test_sweep_summary_gives_the_spread_over_seeds_and_the_paired_difference():
    from trainer.sweep import _arm_name, summarize

    ua = {(0.05, "pretrained"): [0.7, 0.6, 0.8], (0.05, "scratch"): [0.5, 0.65, 0.4], (1.0, "pretrained"): [0.9, 0.9, 0.9], (1.0, "scratch"): [0.9, 0.8, 1.0]}
    rows = [{"fraction": f, "arm": arm, "seed": s, "train_rows": 4 if f < 1 else 80, "test_ua": v}
            for (f, arm), values in ua.items() for s, v in zip([0, 1, 2], values)]
    rows.append({"fraction": 1.0, "arm": "scratch", "seed": 3, "train_rows": 80, "test_ua": None})  # a failed fine-tune: left out
    low, full = summarize(rows)
    assert low["fraction"] == 0.05 and low["train_rows"] == [4]
    assert low["pretrained_ua"] == {"n": 3, "mean": 0.7, "sd": 0.1, "min": 0.6, "max": 0.8}
    assert low["scratch_ua"]["mean"] == pytest.approx(0.5167, abs=1e-4) and low["scratch_ua"]["sd"] == pytest.approx(0.125831, abs=1e-4)
    # Paired by seed: +0.2, -0.05, +0.4.
    assert low["difference_ua"]["mean"] == pytest.approx(0.1833, abs=1e-4) and low["difference_ua"]["min"] == pytest.approx(-0.05)
    assert low["difference_ua"]["pretrained_better"] == 2 and low["difference_ua"]["n"] == 3
    assert full["scratch_ua"]["n"] == 3 and full["difference_ua"]["mean"] == pytest.approx(0.0, abs=1e-9)
    one = summarize([{"fraction": 0.5, "arm": a, "seed": None, "train_rows": 9, "test_ua": 0.5} for a in ("pretrained", "scratch")])
    assert one[0]["pretrained_ua"]["sd"] == 0.0 and one[0]["difference_ua"]["n"] == 1
    # Run names: unchanged without seeds (old sweeps resume), the seed in them with seeds.
    assert _arm_name("sweep", 0.05, "scratch") == "sweep_5pct_scratch"
    assert _arm_name("sweep", 0.125, "pretrained", 2) == "sweep_12p5pct_s2_pretrained"


def test_importing_trainer_is_light():
    code = (
        "import sys, trainer, trainer.cli, trainer.config, trainer.errors, trainer.jobs, trainer.ingest, trainer.corpora, "
        "trainer.evaluate, trainer.sweep, trainer.recipe, trainer.reports, trainer.checkpoint, trainer.features, trainer.metrics\n"
        "heavy = [m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_false_refuses_to_reuse_a_run_name(tmp_path):
    from trainer.config import build_config
    from trainer.errors import JobError
    from trainer.jobs import fit

    cfg = build_config("pretrain", {"data": {"root": "x", "taxonomy": "ekman"}, "output_dir": str(tmp_path), "resume": False, "name": "taken"})
    run = tmp_path / "checkpoints" / "taken"
    run.mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    with pytest.raises(JobError, match="a run named 'taken' already exists"):
        fit(cfg, job="pretrain", prepared=None, model={}, features={})


# --------------------------------------------------------------------------- epochs, CLI flags


def test_checkpoints_and_reports_of_older_versions_are_read_with_epochs_from_1(tmp_path):
    """Older versions wrote 0-based epochs and no epoch_base; reading them back (resume,
    sweep reruns) renumbers them once, and files already numbered from 1 stay as they are."""
    import json

    from trainer.checkpoint import FORMAT, read_meta
    from trainer.reports import completed_report

    old_meta = {
        "format": FORMAT, "epoch": 2, "global_step": 30, "metrics": {"epoch": 2, "val_ua": 0.7},
        "best": {"epoch": 1, "metric": "val_ua", "value": 0.8},
        "history": [{"epoch": e, "attempt": int(e >= 2)} for e in range(3)],
        "attempts": [{"start_epoch": 0}, {"start_epoch": 2}],
    }
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text(json.dumps(old_meta))
    meta = read_meta(str(tmp_path / "old"))
    # three epochs done: a resumed run continues at state["epoch"] + 1 = 4, the fourth pass
    assert meta["epoch"] == 3 and meta["metrics"]["epoch"] == 3 and meta["best"]["epoch"] == 2
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3] and [a["start_epoch"] for a in meta["attempts"]] == [1, 3]
    assert meta["epoch_base"] == 1
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "meta.json").write_text(json.dumps(meta))
    assert read_meta(str(tmp_path / "new")) == meta  # not renumbered twice

    old_report = {
        "status": "completed", "epochs_completed": 3, "config": {"train": {"epochs": 3}},
        "best_checkpoint": {"path": "p", "epoch": 1, "metric": "val_ua", "value": 0.8},
        "history": [{"epoch": e} for e in range(3)], "final_metrics": {"epoch": 2}, "attempts": [{"start_epoch": 0}],
    }
    (tmp_path / "report.json").write_text(json.dumps(old_report))
    report = completed_report(str(tmp_path))
    assert report["best_checkpoint"]["epoch"] == 2 and report["final_metrics"]["epoch"] == 3
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3] and report["attempts"][0]["start_epoch"] == 1
    assert report["epochs_completed"] == 3 and report["config"]["train"]["epochs"] == 3  # counts, not epoch numbers


def test_summary_line_names_the_reports_best_epoch():
    from trainer.cli import _summary

    report = {"epochs_completed": 9, "best_checkpoint": {"metric": "val_ua", "value": 0.6741, "epoch": 8}}
    assert "9 epochs, best val_ua 0.674 (epoch 8);" in _summary("pretrain", report, "out")


@pytest.mark.parametrize("command", ["pretrain", "finetune", "evaluate", "sweep"])
def test_no_progress_flag_sets_progress_false_on_every_command(command):
    from trainer.cli import build_parser, overrides
    from trainer.config import apply_override

    assert ("progress", False) in overrides(build_parser().parse_args([command, "--no-progress"]))
    assert not any(key == "progress" for key, _ in overrides(build_parser().parse_args([command])))
    # the flag wins over --set progress=true, as every shortcut flag follows --set
    data: dict = {}
    for key, value in overrides(build_parser().parse_args([command, "--set", "progress=true", "--no-progress"])):
        apply_override(data, key, value)
    assert data["progress"] is False
