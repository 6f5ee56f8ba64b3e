"""How the trainer uses the machine: torch threads, the whole-clip feature cache and its
fresh crops, the allocator setting, their config validation, and one real cached run."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from trainer_testlib import WEAK_CLASSES, synth_clip, tiny_train_config, write_wav


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    "setting, cpus, cores, local, expect",
    [
        ("auto", 1.0, 2, 1, 2),  # the laptop: one worker gets both cores, not int(1.0) = 1
        ("auto", 0.5, 2, 2, 1),  # two workers on two cores: one each, not int(0.5) = 0
        ("auto", 1.5, 8, 8, 2),  # 1.5 CPUs rounds up, not down to 1
        ("auto", 4.0, 64, 8, 8),  # a big node shared by 8 workers: its share
        ("auto", 4.0, 2, 1, 2),  # never more threads than cores the process may run on
        ("auto", 0.25, 1, 4, 1),
        (3, 1.0, 2, 1, 3),  # an explicit number is used as it is
    ],
)
def test_auto_threads_are_the_cores_a_worker_can_use(setting, cpus, cores, local, expect):
    from trainer.runtime import choose_threads

    assert choose_threads(setting, cpus_per_worker=cpus, cores=cores, local_workers=local) == expect


def test_usable_cores_is_the_affinity_mask():
    from trainer.runtime import usable_cores

    assert usable_cores() == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_keep_freed_memory_applies_on_glibc_and_is_a_no_op_elsewhere(monkeypatch):
    import platform

    from trainer import runtime

    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert runtime.keep_freed_memory() is on_glibc
    assert runtime.keep_freed_memory() is on_glibc  # twice is harmless
    np.zeros(8 << 20, np.float32).sum()  # big allocations still work after it
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.keep_freed_memory() is False


# --------------------------------------------------------------------------- config


def test_scaling_settings_are_validated_and_the_laptop_config_uses_them():
    from trainer.config import JobConfigError, build_config, load_config

    base = {"data": {"root": "out", "taxonomy": "ekman"}, "output_dir": "runs/x"}
    cfg = build_config("pretrain", base)
    assert (cfg.scaling.torch_threads, cfg.scaling.prefetch_batches, cfg.scaling.keep_freed_memory) == ("auto", 2, True)
    assert (cfg.model.channels, cfg.features.max_seconds) == (16, 4.0)  # the laptop-sized defaults
    assert build_config("pretrain", {**base, "scaling": {"torch_threads": 3}}).scaling.torch_threads == 3
    for bad in (0, -1, 2.5, "many", True):
        with pytest.raises(JobConfigError) as err:
            build_config("pretrain", {**base, "scaling": {"torch_threads": bad}})
        assert str(err.value).endswith(f"(1 problem): scaling.torch_threads: must be auto or a whole number of threads from 1 to 1024 (got {bad!r})")
    with pytest.raises(JobConfigError, match=r"scaling.prefetch_batches: Input should be greater than or equal to 0 \(got -1\)"):
        build_config("pretrain", {**base, "scaling": {"prefetch_batches": -1}})
    laptop = load_config("pretrain", "trainer/configs/pretrain.yaml")
    assert laptop.data.cache_features and laptop.scaling.torch_threads == "auto"
    assert (laptop.model.channels, laptop.features.max_seconds) == (16, 4.0)
    gpu = load_config("pretrain", "trainer/configs/pretrain_gpu_cluster.yaml")
    assert gpu.scaling.use_gpu and gpu.model.channels == 64 and not gpu.data.cache_features


# --------------------------------------------------------------------------- the feature cache


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three 2.5-s clips and one 0.5-s clip (shorter than the crop) as WAV files."""
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(3)
    waves = [synth_clip(k, rng, 2.5) for k in ("anger", "joy", "sadness")] + [synth_clip("neutral", rng, 0.5)]
    return [write_wav(str(d / f"c{i}.wav"), w) for i, w in enumerate(waves)]


def _batch(paths):
    return {"uri": np.asarray(paths, dtype=object), "label_index": np.arange(len(paths)) % 4, "utt_id": np.asarray(paths, dtype=object)}


def _window_at(whole: np.ndarray, crop: np.ndarray, n: int) -> int:
    """The offset of ``crop``'s first ``n`` frames inside ``whole`` (exact equality), or -1."""
    for k in range(whole.shape[1] - n + 1):
        if np.array_equal(whole[:, k : k + n], crop[:, :n]):
            return k
    return -1


def test_cached_whole_clip_features_give_the_uncached_crops(clips):
    from labeler.audio import load
    from trainer.features import FeatureSpec, crop_batch, featurize_batch, log_mel

    spec = FeatureSpec(n_mels=32, max_seconds=1.0)
    kw = {"spec": spec.to_dict(), "num_classes": 4}
    whole = featurize_batch(_batch(clips), crop="none", **kw)
    assert whole["features"].dtype == object and whole["ok"].all()
    for i, path in enumerate(clips):  # the cache holds the log-mel of the whole clip
        expect = log_mel(load(path)[0].waveform, spec)
        assert np.array_equal(whole["features"][i], expect) and whole["n_frames"][i] == expect.shape[1]
    crops, n_frames = crop_batch(whole["features"], spec.max_frames, np.random.default_rng(0))
    assert crops.shape == (4, 32, spec.max_frames) and n_frames.tolist() == [spec.max_frames] * 3 + [whole["n_frames"][3]]
    uncached = featurize_batch(_batch(clips), crop="random", **kw)
    for i in range(3):  # a cached crop and an uncached one are both windows of the same features
        assert _window_at(whole["features"][i], crops[i], spec.max_frames) >= 0
        assert _window_at(whole["features"][i], uncached["features"][i], spec.max_frames) >= 0
    # a clip shorter than the crop is zero-padded exactly as without the cache
    start = featurize_batch(_batch(clips), crop="start", **kw)
    assert np.array_equal(crops[3], start["features"][3]) and n_frames[3] == start["n_frames"][3]


def test_an_unreadable_clip_is_cached_as_no_frames(clips, tmp_path):
    from trainer.features import FeatureSpec, crop_batch, featurize_batch

    spec = FeatureSpec(n_mels=16, max_seconds=1.0)
    out = featurize_batch(_batch([clips[0], str(tmp_path / "gone.wav")]), crop="none", spec=spec.to_dict(), num_classes=4)
    assert out["ok"].tolist() == [True, False] and out["features"][1].shape == (16, 0) and out["n_frames"][1] == 0
    crops, n_frames = crop_batch(out["features"], spec.max_frames, np.random.default_rng(0))
    assert n_frames[1] == 0 and not crops[1].any()


def test_each_epoch_crops_the_cached_clips_afresh(ray_local, clips):
    """Through Ray Data as training reads it: featurized once (materialized), then two
    passes with the crop collate function, which runs in Ray's prefetch threads."""
    from trainer.features import FeatureSpec, crop_collate
    from trainer.ingest import featurize

    spec = FeatureSpec(n_mels=16, max_seconds=0.5)
    rows = ray_local.data.from_items([{"utt_id": p, "uri": p, "label_index": i % 4} for i, p in enumerate(clips[:3])])
    ds = featurize(rows, spec=spec, num_classes=4, train=True, data_cpus=0.5, batch_size=4, base_dir=None, whole=True).materialize()
    whole = {r["utt_id"]: r["features"] for r in featurize(rows, spec=spec, num_classes=4, train=True, data_cpus=0.5, batch_size=4, base_dir=None, keep_ids=True, whole=True).take_all()}
    offsets = []
    for _ in range(4):  # epochs
        epoch = {}
        for batch in ds.iterator().iter_torch_batches(batch_size=3, collate_fn=crop_collate(spec.max_frames), prefetch_batches=2):
            assert batch["features"].shape == (3, 16, spec.max_frames) and batch["n_frames"].tolist() == [spec.max_frames] * 3
            for feats, label in zip(batch["features"].numpy(), batch["label"].tolist()):
                epoch[label] = _window_at(whole[clips[label]], feats, spec.max_frames)
        assert sorted(epoch) == [0, 1, 2] and min(epoch.values()) >= 0  # every crop is a window of its clip
        offsets.append(tuple(epoch[k] for k in range(3)))
    # 2.5-s clips hold ~200 windows of 0.5 s: four epochs cropping the same three never repeat
    assert len(set(offsets)) == 4, offsets


# --------------------------------------------------------------------------- a real run


def test_cached_training_on_ray_train_uses_the_cores_and_learns(ray_local, weak_corpus, tmp_path):
    from trainer.config import build_config
    from trainer.jobs import pretrain
    from trainer.runtime import choose_threads, usable_cores

    cfg = build_config("pretrain", tiny_train_config(
        data={"kind": "labels", "root": weak_corpus["root"], "taxonomy": "ekman", "min_confidence": 0.4, "val_fraction": 0.25, "cache_features": True},
        train={"epochs": 4},
        scaling={"torch_threads": "auto", "prefetch_batches": 2, "keep_freed_memory": True},
        output_dir=str(tmp_path),
    ))
    report = pretrain(cfg)
    attempt = report["attempts"][0]
    assert attempt["torch_threads"] == choose_threads("auto", cpus_per_worker=0.5, cores=usable_cores(), local_workers=1)
    history = report["history"]
    counts, missing = report["data"]["counts"], weak_corpus["expect"]["missing_file"]
    # every readable training clip is seen every epoch, and the deleted one is counted, not learned from
    assert all(h["train_rows"] + h["val_rows"] + h["skipped_unreadable"] == counts["train"] + counts["val"] for h in history)
    assert all(h["skipped_unreadable"] == missing for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert report["best_checkpoint"]["value"] > 1 / len(WEAK_CLASSES), history
