"""A pretrained speech encoder (``model.encoder: pretrained``) through the whole trainer: a tiny
random WavLM built from its config and saved with ``save_pretrained`` (no hub), loaded by
transformers' own ``AutoModel.from_pretrained``; weak-label pretraining with the backbone
frozen, resuming without the encoder's folder, fine-tuning it unfrozen, evaluation."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from trainer_testlib import SR, build_tiny_encoder, synth_clip, tiny_train_config

SPLIT = {"test_groups": ["Actor_07", "Actor_08"], "val_groups": ["Actor_06"]}


def encoder_config(model: dict, **sections) -> dict:
    """:func:`tiny_train_config` with a pretrained-encoder model section (which reads the
    waveform: only ``features.max_seconds`` applies)."""
    cfg = tiny_train_config(**sections)
    cfg["model"] = {"encoder": "pretrained", "embed_dim": 32, "dropout": 0.1, **model}
    cfg["features"] = {"max_seconds": 1.5}
    return cfg


def backbone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.encoder.backbone.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return build_tiny_encoder(str(tmp_path_factory.mktemp("encoders") / "wavlm-tiny"), "wavlm")


@pytest.fixture(scope="module")
def ssl_pretrain(ray_local, weak_corpus, tiny_encoder, tmp_path_factory):
    """Weak-label pretraining on a frozen tiny WavLM (a copy of it, which the resume test
    deletes), waveforms cached in the object store. Returns (config dict, report, folder)."""
    from trainer.config import build_config
    from trainer.jobs import pretrain

    base = tmp_path_factory.mktemp("ssl-pretrain")
    folder = str(base / "encoder")
    shutil.copytree(tiny_encoder, folder)
    config = encoder_config(
        {"name_or_path": folder, "freeze": True},
        data={"kind": "labels", "root": weak_corpus["root"], "taxonomy": "ekman", "min_confidence": 0.4,
              "val_fraction": 0.25, "cache_features": True},
        optim={"lr": 0.01, "warmup_epochs": 0},
        train={"epochs": 2},
        output_dir=str(base / "out"),
        name="ssl",
    )
    return config, pretrain(build_config("pretrain", config)), folder


@pytest.fixture(scope="module")
def ssl_resumed(ssl_pretrain):
    """The same command rerun with a third epoch, after the encoder's folder was overwritten
    with other random weights: the resumed run must take its backbone from the checkpoint."""
    from trainer.config import build_config
    from trainer.jobs import pretrain

    config, first, folder = ssl_pretrain
    build_tiny_encoder(folder, "wavlm", seed=1)
    config = {**config, "train": {**config["train"], "epochs": 3}}
    return first, pretrain(build_config("pretrain", config))


# --------------------------------------------------------------------------- pure pieces


def test_layer_mix_is_learnable_sums_to_one_and_a_frozen_backbone_gets_no_gradient(tiny_encoder):
    import torch

    from trainer.encoders import PretrainedSpec, resolve_spec
    from trainer.model import build_model

    spec = resolve_spec(PretrainedSpec(tiny_encoder, freeze=True, embed_dim=16))
    assert spec.model_type == "wavlm" and spec.num_layers == 3 and spec.attention_mask and spec.normalize
    model = build_model(spec, 4, pretrained_weights=True)
    model.train()
    assert not model.encoder.backbone.training  # frozen: kept in eval mode (no dropout, no masking)
    mix = model.encoder.layer_mix()
    assert mix.shape == (3,) and torch.allclose(mix.sum(), torch.tensor(1.0))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([synth_clip("anger", rng, 1.0), synth_clip("sadness", rng, 1.0)]))[:, None]
    loss = torch.nn.functional.cross_entropy(model(x, torch.tensor([SR, SR // 2])), torch.tensor([0, 1]))
    loss.backward()
    assert model.encoder.layer_weights.requires_grad and model.encoder.layer_weights.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.backbone.parameters())
    assert model.head.weight.grad.abs().sum() > 0
    # the optimizer gets one group: nothing of the backbone
    groups = model.param_groups(1e-3)
    assert len(groups) == 1 and not any(p is q for p in groups[0]["params"] for q in model.encoder.backbone.parameters())


def test_an_unfrozen_backbone_trains_its_transformer_at_encoder_lr(tiny_encoder):
    from trainer.encoders import PretrainedSpec, resolve_spec
    from trainer.model import build_model

    spec = resolve_spec(PretrainedSpec(tiny_encoder, freeze=False, encoder_lr=1e-5))
    model = build_model(spec, 4, pretrained_weights=True)
    model.train()
    assert model.encoder.backbone.training
    head, backbone = model.param_groups(1e-3)
    assert head["lr"] == 1e-3 and backbone["lr"] == 1e-5
    cnn = set(map(id, model.encoder.backbone.feature_extractor.parameters()))
    assert backbone["params"] and not cnn & set(map(id, backbone["params"]))  # freeze_feature_encoder: the CNN stays


def test_waveform_normalisation_is_the_feature_extractors(tiny_encoder):
    import torch
    from transformers import AutoFeatureExtractor

    from trainer.model import normalize_waveform

    rng = np.random.default_rng(1)
    clips = [synth_clip("joy", rng, 0.5), 0.01 * synth_clip("neutral", rng, 0.3)]
    want = AutoFeatureExtractor.from_pretrained(tiny_encoder)(clips, sampling_rate=SR, padding=True, return_tensors="np")
    padded = np.zeros((2, len(clips[0])), np.float32)
    for i, c in enumerate(clips):
        padded[i, : len(c)] = c
    got = normalize_waveform(torch.from_numpy(padded), torch.tensor([len(c) for c in clips]))
    np.testing.assert_allclose(got.numpy(), want["input_values"], atol=1e-4)


def test_padding_does_not_change_a_clips_embedding(tiny_encoder):
    """The attention mask and the masked mean: a clip padded in a batch with a longer one
    embeds as it does alone."""
    import torch

    from trainer.encoders import PretrainedSpec, resolve_spec
    from trainer.model import build_model

    model = build_model(resolve_spec(PretrainedSpec(tiny_encoder, embed_dim=16)), 4, pretrained_weights=True).eval()
    rng = np.random.default_rng(2)
    short, long = synth_clip("joy", rng, 0.6), synth_clip("anger", rng, 1.2)
    batch = np.zeros((2, 1, len(long)), np.float32)
    batch[0, 0, : len(short)], batch[1, 0] = short, long
    with torch.no_grad():
        together = model.embed(torch.from_numpy(batch), torch.tensor([len(short), len(long)]))
        alone = model.embed(torch.from_numpy(short)[None, None], torch.tensor([len(short)]))
    torch.testing.assert_close(together[0], alone[0], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
def test_every_family_loads_through_auto_model(family, tmp_path):
    import torch

    from trainer.encoders import PretrainedSpec, resolve_spec
    from trainer.model import build_model

    path = build_tiny_encoder(str(tmp_path / family), family, do_normalize=False)
    spec = resolve_spec(PretrainedSpec(path, embed_dim=8))
    assert spec.model_type == family and spec.normalize is False  # as its preprocessor_config.json says
    model = build_model(spec, 3, pretrained_weights=True).eval()
    assert type(model.encoder.backbone).__name__.lower().startswith(family)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, SR), torch.tensor([SR, SR // 3])).shape == (2, 3)


def test_waveform_features_are_the_decoded_samples_cropped_and_cached(weak_corpus):
    from labeler.audio import load
    from trainer.features import FeatureSpec, crop_batch, featurize_batch

    spec = FeatureSpec(max_seconds=0.5, kind="waveform")
    uris = sorted(os.path.join(weak_corpus["root"], "audio", f) for f in os.listdir(os.path.join(weak_corpus["root"], "audio")))[:3]
    batch = {"uri": np.array(uris, dtype=object), "label_index": np.zeros(3, np.int64)}
    fixed = featurize_batch(batch, spec=spec.to_dict(), num_classes=7, crop="start")
    assert fixed["features"].shape == (3, 1, SR // 2) and spec.max_frames == SR // 2
    whole = featurize_batch(batch, spec=spec.to_dict(), num_classes=7, crop="none")
    for i, uri in enumerate(uris):
        samples = load(uri)[0].waveform
        np.testing.assert_array_equal(whole["features"][i][0], samples)  # the cache keeps the whole clip
        np.testing.assert_array_equal(fixed["features"][i][0], samples[: SR // 2])
    crops, n = crop_batch(whole["features"], spec.max_frames, np.random.default_rng(0))
    assert crops.shape == (3, 1, SR // 2) and (n == SR // 2).all()


# --------------------------------------------------------------------------- config errors


def _folder(tmp_path, model_type):
    path = tmp_path / model_type
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(path)


@pytest.mark.parametrize("case", ["missing folder", "unknown family", "whisper", "no name", "mel settings", "unknown encoder", "resnet field"])
def test_encoder_config_errors_are_one_clear_line(case, tmp_path):
    from trainer.config import build_config
    from trainer.errors import JobConfigError

    model, features, expect = {"encoder": "pretrained", "name_or_path": "microsoft/wavlm-base-plus"}, {}, None
    if case == "missing folder":
        model["name_or_path"], expect = str(tmp_path / "nowhere"), "model.name_or_path: no such folder"
    elif case == "unknown family":
        model["name_or_path"], expect = _folder(tmp_path, "bert"), "'bert' model; supported encoder families: wavlm, hubert, wav2vec2"
    elif case == "whisper":
        model["name_or_path"], expect = _folder(tmp_path, "whisper"), "Whisper's encoder is not supported"
    elif case == "no name":
        del model["name_or_path"]
        expect = "model.name_or_path: required for encoder: pretrained"
    elif case == "mel settings":
        features, expect = {"n_mels": 40, "max_seconds": 3}, "features.n_mels would be unused"
    elif case == "unknown encoder":
        model, expect = {"encoder": "conformer"}, "model: encoder must be resnet or pretrained"
    else:
        model["channels"], expect = 16, "model.channels: unknown field"
    data = {"data": {"kind": "labels", "root": "x", "taxonomy": "ekman"}, "output_dir": str(tmp_path), "model": model, "features": features}
    with pytest.raises(JobConfigError) as err:
        build_config("pretrain", data)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "1 problem" in message and expect in message, message


def test_a_hub_id_that_cannot_be_reached_fails_before_training_with_one_line(tmp_path):
    from trainer.config import build_config
    from trainer.errors import JobError
    from trainer.jobs import model_spec

    cfg = build_config("pretrain", {
        "data": {"kind": "labels", "root": "x", "taxonomy": "ekman"}, "output_dir": str(tmp_path),
        "model": {"encoder": "pretrained", "name_or_path": "lanser-tests/no-such-encoder"},
    })
    with pytest.raises(JobError) as err:
        model_spec(cfg)  # offline in the tests (HF_HUB_OFFLINE): the hub is not reached
    message = str(err.value)
    assert len(message.splitlines()) == 1 and message.startswith("model.name_or_path: cannot load") and "no-such-encoder" in message


# --------------------------------------------------------------------------- on Ray Train


def test_weak_label_pretraining_on_a_frozen_encoder_trains_only_the_mix_and_head(ssl_pretrain, weak_corpus, tiny_encoder):
    from transformers import AutoModel

    from trainer.checkpoint import load_model

    config, report, _ = ssl_pretrain
    expect = weak_corpus["expect"]
    model_meta = report["model"]
    assert model_meta["encoder"] == "pretrained" and model_meta["model_type"] == "wavlm" and model_meta["freeze"]
    assert model_meta["backbone_config"]["hidden_size"] == 32  # what evaluate and resume rebuild it from
    assert report["features"]["kind"] == "waveform" and report["features"]["max_seconds"] == 1.5
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["train_loss"]) for h in history)
    assert all(h["skipped_unreadable"] == expect["missing_file"] for h in history)  # the deleted clip, counted, never learned
    counts = report["data"]["counts"]
    assert all(0 < h["train_rows"] and h["train_rows"] + h["val_rows"] + h["skipped_unreadable"] <= counts["train"] + counts["val"] for h in history)
    model, meta = load_model(report["latest_checkpoint"])
    published = AutoModel.from_pretrained(tiny_encoder).state_dict()
    trained = backbone_state(model)
    assert trained.keys() == published.keys()
    for name, value in published.items():
        assert np.array_equal(trained[name].numpy(), value.numpy()), name  # frozen: as published
    # what trains: the layer mix (it started as zeros, the plain average), projection and head
    assert model.encoder.layer_weights.abs().max() > 1e-4
    assert abs(float(model.encoder.layer_mix().detach().sum()) - 1) < 1e-6
    assert model.head.out_features == 7 and meta["label_names"][0] == "anger"
    # epoch 1's checkpoint against epoch 2's: the head moved, the backbone did not
    first, _ = load_model(os.path.join(report["run_path"], "checkpoint_epoch_0001"))
    assert not np.array_equal(first.head.weight.detach().numpy(), model.head.weight.detach().numpy())
    assert all(np.array_equal(v.numpy(), trained[k].numpy()) for k, v in backbone_state(first).items())
    assert report["parameters"] == sum(p.numel() for p in model.parameters())


def test_resuming_rebuilds_the_encoder_from_its_checkpoint(ssl_resumed, tiny_encoder):
    from transformers import AutoModel

    from trainer.checkpoint import load_model

    first, report = ssl_resumed
    assert report["resumed"] and len(report["attempts"]) == 2
    resumed = report["attempts"][-1]
    assert resumed["start_epoch"] == 3 and resumed["resumed_from"].endswith("checkpoint_epoch_0002")
    history = report["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[:2] == [{**h, "attempt": 0} for h in first["history"]]  # the first two epochs as they were run
    assert resumed["start_global_step"] == first["history"][-1]["global_step"] > 0
    assert history[2]["global_step"] > history[1]["global_step"]
    # the folder now holds other weights; the run kept the ones it started from
    model, _ = load_model(report["latest_checkpoint"])
    published = AutoModel.from_pretrained(tiny_encoder).state_dict()
    assert all(np.array_equal(v.numpy(), published[k].numpy()) for k, v in backbone_state(model).items())


def test_finetuning_unfreezes_the_weak_label_encoder_and_evaluate_reproduces_its_test_scores(ssl_resumed, ravdess_root, ray_local, tmp_path):
    import torch

    from trainer.checkpoint import load_model, load_states, open_checkpoint
    from trainer.config import build_config
    from trainer.evaluate import evaluate
    from trainer.jobs import finetune

    _, pre = ssl_resumed
    cfg = build_config("finetune", encoder_config(
        # the architecture comes from the checkpoint; these say how its backbone trains now
        {"freeze": False, "encoder_lr": 0.001},
        data={"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", **SPLIT},
        init_checkpoint=pre["best_checkpoint"]["path"],
        optim={"lr": 0.01, "warmup_epochs": 0},
        train={"epochs": 2},
        output_dir=str(tmp_path / "ft"),
    ))
    report = finetune(cfg)
    assert report["model"]["freeze"] is False and report["model"]["encoder_lr"] == 0.001
    assert report["model"]["name_or_path"] == pre["model"]["name_or_path"]
    test = report["test"]
    assert test["scored"] == 2 * 4 * 4 and 0 <= test["metrics"]["ua"] <= 1
    with open_checkpoint(report["latest_checkpoint"]) as directory:
        _, _, train_state = load_states(directory, train_state=True)
    groups = train_state["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] / groups[0]["lr"] == pytest.approx(0.1)  # encoder_lr : lr

    tuned, meta = load_model(report["latest_checkpoint"])
    start, _ = load_model(pre["best_checkpoint"]["path"])
    assert tuned.head.out_features == 4 and meta["label_names"] == ["neutral", "happy", "sad", "angry"]
    before, after = backbone_state(start), backbone_state(tuned)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.layers") for k in changed), sorted(changed)[:5]
    assert not any(k.startswith("feature_extractor") for k in changed)  # freeze_feature_encoder: the CNN stays

    ev = evaluate(build_config("evaluate", {
        "checkpoint": report["best_checkpoint"]["path"],
        "data": {"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", **SPLIT},
        "split": "test",
        "embeddings": True,
        "inference": {"cpus": 0.5, "data_cpus": 0.5},
        "output_dir": str(tmp_path / "eval"),
        "progress": False,
    }))
    assert ev["metrics"] == test["metrics"]  # same checkpoint, same clips, rebuilt from meta.json alone
    import pyarrow.dataset as pads

    table = pads.dataset(ev["embeddings"], format="parquet").to_table()
    assert table.num_rows == 32 and {len(e) for e in table.column("embedding").to_pylist()} == {32}
