"""Driver side of ``pretrain`` and ``finetune``: data -> ``TorchTrainer`` running the recipe
-> report. Checkpoints go to ``RunConfig(storage_path, name)``, so running the same command
again resumes the run from its latest checkpoint.

    >>> from trainer.config import load_config
    >>> from trainer.jobs import pretrain
    >>> report = pretrain(load_config("pretrain", "trainer/configs/pretrain.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from trainer.errors import JobError
from trainer.reports import EPOCH_BASE, REPORT, write_json

if TYPE_CHECKING:
    from trainer.config import FinetuneConfig, PretrainConfig
    from trainer.encoders import PretrainedSpec
    from trainer.features import FeatureSpec
    from trainer.ingest import PreparedData
    from trainer.model import ModelSpec


def class_weights(counts: list[int]) -> list[float]:
    """``total / (classes present x count)`` per class; 1.0 for classes with no rows."""
    present = [c for c in counts if c > 0]
    total = sum(present)
    return [total / (len(present) * c) if c > 0 else 1.0 for c in counts]


def _run_exists(storage: str, name: str) -> bool:
    import pyarrow.fs as pafs

    from labeler.io import filesystem, join

    fs, base = filesystem(storage)
    return fs.get_file_info(join(base, name, "checkpoint_manager_snapshot.json")).type == pafs.FileType.File


def fit(
    cfg: PretrainConfig | FinetuneConfig,
    *,
    job: str,
    prepared: PreparedData,
    model: ModelSpec | PretrainedSpec,
    features: FeatureSpec,
    init_checkpoint: str | None = None,
) -> dict[str, Any]:
    """Run the recipe on Ray Train; returns the latest checkpoint's meta and both checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainer.checkpoint import read_checkpoint_meta
    from trainer.ingest import featurize
    from trainer.recipe import RecipeConfig, train_loop_per_worker

    storage = cfg.storage()
    if not cfg.resume and _run_exists(storage, cfg.name):
        raise JobError(f"a run named {cfg.name!r} already exists under {storage}; set resume: true to continue it, or choose another name")
    for split in ("train", "val"):
        if prepared.split_size(split) == 0:
            raise JobError(f"the {split} split of {prepared.kind} data is empty ({prepared.summary.get('splits')}); adjust the split settings")
    num_classes = len(prepared.label_names)
    scaling = cfg.scaling

    def stream(split: str):
        ds = featurize(
            prepared.rows(split), spec=features, num_classes=num_classes, train=split == "train",
            data_cpus=scaling.data_cpus, batch_size=scaling.data_batch_size, base_dir=prepared.base_dir,
            whole=prepared.cache_features and split == "train",
        )
        # Cached: decoded once into the object store (spread over the cluster), reused every
        # epoch; the training split keeps whole clips, which the workers crop afresh each epoch.
        return ds.materialize() if prepared.cache_features else ds

    recipe = RecipeConfig(
        job=job,
        taxonomy={"name": prepared.taxonomy.name, "version": prepared.taxonomy.version},
        label_names=prepared.label_names,
        model=model,
        features=features,
        train=cfg.train,
        optim=cfg.optim,
        checkpoint=cfg.checkpoint,
        cpus_per_worker=scaling.cpus_per_worker,
        torch_threads=scaling.torch_threads,
        prefetch_batches=scaling.prefetch_batches,
        keep_freed_memory=scaling.keep_freed_memory,
        cached_train=prepared.cache_features,
        class_weights=class_weights(prepared.class_counts("train")) if cfg.train.class_weighting == "balanced" else None,
        init_checkpoint=init_checkpoint,
        freeze_encoder=bool(getattr(cfg, "freeze_encoder", False)),  # finetune only
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"recipe": recipe},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.checkpoint.num_to_keep,
                checkpoint_score_attribute=cfg.checkpoint.metric,
                checkpoint_score_order=cfg.checkpoint.mode,
            ),
        ),
        datasets={"train": stream("train"), "val": stream("val")},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise JobError(f"run {cfg.name!r} finished without reporting a checkpoint")
    meta = read_checkpoint_meta(result.checkpoint)
    metric = cfg.checkpoint.metric
    pick = max if cfg.checkpoint.mode == "max" else min
    best_ckpt, best_metrics = pick(result.best_checkpoints or [(result.checkpoint, meta["metrics"])], key=lambda cm: cm[1][metric])
    # The best epoch is the one its checkpoint's meta.json names (1-based, renumbered if an
    # older version wrote it), not Ray's copy of the metrics, which keeps the numbering of
    # whichever version reported them.
    best_meta = meta if best_ckpt.path == result.checkpoint.path else read_checkpoint_meta(best_ckpt)
    latest = _checkpoint_uri(result.checkpoint.path, storage)
    return {
        "meta": meta,
        "latest_checkpoint": latest,
        "best_checkpoint": {"path": _checkpoint_uri(best_ckpt.path, storage), "epoch": best_meta["epoch"], "metric": metric, "value": best_metrics[metric]},
        "run_path": latest.rstrip("/").rsplit("/", 1)[0],
    }


def _checkpoint_uri(path: str, storage: str) -> str:
    """Ray gives checkpoint paths inside their filesystem (``bucket/key`` for S3); put the
    storage URI's scheme back so the report's paths can be used as they are."""
    scheme, sep, _ = storage.partition("://")
    return f"{scheme}://{path.lstrip('/')}" if sep and "://" not in path else path


def _report(cfg: PretrainConfig | FinetuneConfig, job: str, prepared: PreparedData, outcome: dict, started: float, **extra) -> dict:
    meta = outcome["meta"]
    history = meta["history"]
    return {
        "command": job,
        "status": "completed",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 2),
        "name": cfg.name,
        "storage_path": cfg.storage(),
        "run_path": outcome["run_path"],
        "taxonomy": meta["taxonomy"],
        "label_names": meta["label_names"],
        "data": prepared.summary,
        "model": meta["model"],
        "features": meta["features"],
        "epoch_base": EPOCH_BASE,  # history, attempts and best_checkpoint number epochs from 1
        "epochs_completed": meta["epoch"],  # the number of the last epoch completed = how many
        "global_step": meta["global_step"],
        "attempts": meta["attempts"],
        "resumed": len(meta["attempts"]) > 1 or meta["attempts"][0]["start_epoch"] > EPOCH_BASE,
        "history": history,
        "final_metrics": history[-1] if history else None,
        "best_checkpoint": outcome["best_checkpoint"],
        "latest_checkpoint": outcome["latest_checkpoint"],
        "config": cfg.model_dump(mode="json"),
        **extra,
    }


def model_spec(cfg: PretrainConfig | FinetuneConfig) -> ModelSpec | PretrainedSpec:
    """The config's model: the ResNet's spec, or a pretrained encoder's, completed from the
    encoder's own config and feature extractor (read here, on the driver, so a bad model
    fails before any data is read)."""
    from trainer.encoders import EncoderError, PretrainedSpec, resolve_spec

    spec = cfg.model.spec(cfg.features.n_mels)
    if isinstance(spec, PretrainedSpec):
        try:
            spec = resolve_spec(spec)
        except EncoderError as exc:
            raise JobError(f"model.name_or_path: {exc}") from None
    return spec


def parameter_count(spec: ModelSpec | PretrainedSpec, num_classes: int) -> int:
    """Parameters of the model, counted on torch's meta device (no memory, no weights read)."""
    import torch

    from trainer.model import build_model, count_parameters

    with torch.device("meta"):
        return count_parameters(build_model(spec, num_classes))


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """``lanser-train pretrain``: weak labels -> SER model. Returns (and writes) the report."""
    from trainer.ingest import prepare_data

    started = time.time()
    model = model_spec(cfg)
    prepared = prepare_data(cfg.data)
    outcome = fit(cfg, job="pretrain", prepared=prepared, model=model, features=cfg.feature_spec())
    params = parameter_count(model, len(prepared.label_names))
    report = _report(cfg, "pretrain", prepared, outcome, started, parameters=params)
    write_json(os.path.join(cfg.output_dir, REPORT), report)
    return report


def finetune(cfg: FinetuneConfig, prepared: PreparedData | None = None) -> dict[str, Any]:
    """``lanser-train finetune``: a labeled corpus (optionally from a pretrained encoder) ->
    SER model, evaluated on the held-out test speakers. ``prepared`` lets the sweep reuse
    one resolved corpus."""
    from trainer.checkpoint import open_checkpoint, read_meta, resolve_checkpoint
    from trainer.evaluate import evaluate_rows
    from trainer.features import FeatureSpec
    from trainer.ingest import prepare_data
    from trainer.model import spec_from_dict

    started = time.time()
    init = None
    if cfg.init_checkpoint:
        init = resolve_checkpoint(cfg.init_checkpoint)
        with open_checkpoint(init) as directory:
            init_meta = read_meta(directory)
        # the pretrained encoder defines both
        features, model = FeatureSpec(**init_meta["features"]), spec_from_dict(init_meta["model"])
        model = _training_choices(cfg, model)
    else:
        features, model = cfg.feature_spec(), model_spec(cfg)
    prepared = prepared or prepare_data(cfg.data)
    prepared = prepared.with_train_fraction(cfg.train_fraction, seed=getattr(cfg.data, "seed", 0))
    outcome = fit(cfg, job="finetune", prepared=prepared, model=model, features=features, init_checkpoint=init)
    test = None
    if prepared.split_size("test"):
        test = evaluate_rows(
            outcome["best_checkpoint"]["path"],
            prepared,
            split="test",
            concurrency=1,
            use_gpu=cfg.scaling.use_gpu,
            cpus=cfg.scaling.cpus_per_worker,
            batch_size=cfg.train.batch_size,
            data_cpus=cfg.scaling.data_cpus,
            data_batch_size=cfg.scaling.data_batch_size,
        )
    report = _report(cfg, "finetune", prepared, outcome, started, init_checkpoint=init, test=test)
    write_json(os.path.join(cfg.output_dir, REPORT), report)
    return report


#: Fields of a pretrained encoder's config section that a fine-tune from an init checkpoint
#: may change: how its backbone trains, not what it is.
TRAINING_CHOICES = ("freeze", "freeze_feature_encoder", "encoder_lr")


def _training_choices(cfg: FinetuneConfig, init_model: ModelSpec | PretrainedSpec) -> ModelSpec | PretrainedSpec:
    """The init checkpoint's model with the fine-tune's own ``freeze``,
    ``freeze_feature_encoder`` and ``encoder_lr`` where its ``model`` section (``encoder:
    pretrained``) sets them: weak-label pretraining with a frozen backbone, then fine-tuning
    it. The architecture stays the checkpoint's."""
    from dataclasses import replace

    from trainer.config import PretrainedEncoderConfig
    from trainer.encoders import PretrainedSpec

    section = cfg.model
    if not isinstance(section, PretrainedEncoderConfig):
        return init_model
    if not isinstance(init_model, PretrainedSpec):
        raise JobError("model.encoder: pretrained, but init_checkpoint holds a log-mel ResNet; remove the model section or choose another checkpoint")
    if section.name_or_path is not None and section.name_or_path != init_model.name_or_path:
        raise JobError(
            f"model.name_or_path: {section.name_or_path!r}, but init_checkpoint's encoder is {init_model.name_or_path!r}; "
            "remove model.name_or_path (the checkpoint's encoder is used)"
        )
    return replace(init_model, **{k: getattr(section, k) for k in TRAINING_CHOICES if k in section.model_fields_set})
