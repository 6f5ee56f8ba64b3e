"""The training recipe that runs inside every Ray Train worker: :class:`SERTrainRecipe`
(setup / train / save_checkpoint / cleanup) and :func:`train_loop_per_worker`, the thin
function handed to ``TorchTrainer``, which receives a :class:`RecipeConfig`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.config import CheckpointConfig, OptimConfig, TrainConfig
    from trainer.encoders import PretrainedSpec
    from trainer.features import FeatureSpec
    from trainer.model import ModelSpec

logger = logging.getLogger("lanser.trainer")


@dataclass(frozen=True)
class RecipeConfig:
    """Everything one training run needs on every worker (built by :func:`trainer.jobs.fit`;
    the sections are the job config's own validated objects, pickled to the workers)."""

    job: str  # "pretrain" or "finetune"
    taxonomy: dict  # {"name", "version"} of the class head's taxonomy
    label_names: list[str]
    model: ModelSpec | PretrainedSpec
    features: FeatureSpec
    train: TrainConfig
    optim: OptimConfig
    checkpoint: CheckpointConfig
    cpus_per_worker: float = 1.0
    torch_threads: int | str = "auto"  # scaling.torch_threads: see trainer.runtime.choose_threads
    prefetch_batches: int = 2  # batches prepared ahead of the step, in Ray's prefetch threads
    keep_freed_memory: bool = True  # glibc mallopt: see trainer.runtime.keep_freed_memory
    cached_train: bool = False  # the train shard holds whole-clip features, cropped here every epoch
    class_weights: list[float] | None = None  # per class, for train.class_weighting: balanced
    init_checkpoint: str | None = None  # a pretrained checkpoint whose encoder starts the model
    freeze_encoder: bool = False


def lr_factor(epoch: int, epochs: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` epochs, then cosine decay to 5% of the peak.

    ``epoch`` is the LR scheduler's own step count (0 before the first epoch's step), not
    the 1-based epoch number the run reports."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def soft_targets(scores, temperature: float):
    """Temperature-scaled score distribution: ``p^(1/T) / sum p^(1/T)``."""
    import torch

    return torch.softmax(torch.log(scores.float().clamp_min(1e-8)) / temperature, dim=-1)


class SERTrainRecipe:
    """One training run on one worker, in torchtune's shape: :meth:`setup` builds the model,
    optimizer and data iterators and restores Ray Train's latest checkpoint if there is one;
    :meth:`train` runs the epochs; :meth:`save_checkpoint` reports every epoch's metrics (and,
    on rank 0, a checkpoint); :meth:`cleanup` releases what setup took."""

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg
        self.tcfg = cfg.train

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        import ray.train
        import ray.train.torch
        import torch

        from trainer.checkpoint import load_states, open_checkpoint
        from trainer.model import build_model

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.threads = None
        if self.device.type == "cpu":
            from trainer.runtime import choose_threads, usable_cores

            self.threads = choose_threads(
                self.cfg.torch_threads, cpus_per_worker=self.cfg.cpus_per_worker,
                cores=usable_cores(), local_workers=ctx.get_local_world_size(),
            )
            torch.set_num_threads(self.threads)
        if self.cfg.keep_freed_memory:
            from trainer.runtime import keep_freed_memory

            keep_freed_memory()
        torch.manual_seed(self.tcfg.seed)

        self.label_names = self.cfg.label_names
        num_classes = len(self.label_names)
        init = self.cfg.init_checkpoint
        checkpoint = ray.train.get_checkpoint()
        # A pretrained speech encoder reads its published weights only on a fresh start; when a
        # checkpoint (this run's, or the init one) supplies them it is built from its saved
        # configuration, so resuming and fine-tuning need neither its folder nor the hub.
        model = build_model(self.cfg.model, num_classes, pretrained_weights=checkpoint is None and not init)
        if init:
            with open_checkpoint(init) as directory:
                _, state, _ = load_states(directory)
            encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
            model.encoder.load_state_dict(encoder_state)  # strict: a size mismatch is an error, not a silent partial load
        self.freeze_encoder = self.cfg.freeze_encoder
        if self.freeze_encoder:
            model.encoder.requires_grad_(False)
        model.to(self.device)

        ocfg = self.cfg.optim
        # One group at optim.lr; a trainable pretrained backbone gets a second, at its encoder_lr.
        self.optimizer = torch.optim.AdamW(model.param_groups(ocfg.lr), lr=ocfg.lr, weight_decay=ocfg.weight_decay)
        epochs, warmup = self.tcfg.epochs, ocfg.warmup_epochs
        # LambdaLR passes its own 0-based step count (saved with the scheduler's state).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(e, epochs, warmup))

        self.amp_dtype = self._amp_dtype(torch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        weights = self.cfg.class_weights
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.device) if weights else None

        # Epochs are numbered from 1 (epoch 1 is the first pass over the training data);
        # state["epoch"] is the last epoch completed, 0 before the first.
        self.state = {"epoch": 0, "global_step": 0, "history": [], "attempts": [], "best": None}
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                meta, state, train_state = load_states(directory, train_state=True, device=str(self.device))
            model.load_state_dict(state)
            self.optimizer.load_state_dict(train_state["optimizer"])
            self.scheduler.load_state_dict(train_state["scheduler"])
            self.scaler.load_state_dict(train_state["scaler"])
            # load_states -> read_meta renumbers a checkpoint written 0-based by an older
            # version (renumber_epochs), so meta["epoch"] is 1-based here either way.
            self.state = {k: meta[k] for k in self.state}
        self.start_epoch = self.state["epoch"] + 1  # the first epoch this attempt runs
        self.state["attempts"].append({
            "start_epoch": self.start_epoch,
            "start_global_step": self.state["global_step"],
            "resumed_from": checkpoint.path if checkpoint is not None else None,
            "world_size": self.world,
            "device": self.device.type,
            "precision": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype is not None else "float32",
            "torch_threads": self.threads,  # null on GPU workers
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

        self.unwrapped = model
        # DDP when world > 1; moves to the device. A trainable pretrained backbone may leave a
        # parameter unused in a step (SpecAugment's mask embedding when no span is masked).
        backbone = getattr(model.encoder, "backbone", None)
        trainable_backbone = backbone is not None and any(p.requires_grad for p in backbone.parameters())
        self.model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": True} if trainable_backbone else None
        )
        self.train_shard = ray.train.get_dataset_shard("train")
        self.val_shard = ray.train.get_dataset_shard("val")

    def _amp_dtype(self, torch):
        """Mixed precision only on CUDA: bf16 where supported, else fp16 (with a grad scaler)."""
        precision = self.tcfg.precision
        if self.device.type != "cuda" or precision == "fp32":
            return None
        if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16

    def _autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        epochs = self.tcfg.epochs
        for epoch in range(self.start_epoch, epochs + 1):  # 1-based: epochs 1 .. epochs
            t0 = time.time()
            train_stats = self._run_epoch(self.train_shard, train=True)
            val_stats = self._run_epoch(self.val_shard, train=False)
            self.scheduler.step()
            seconds = time.time() - t0
            metrics = {
                "epoch": epoch,
                "global_step": self.state["global_step"],
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_stats["loss"],
                "train_acc": train_stats["acc"],
                "train_rows": train_stats["rows"],
                "val_loss": val_stats["loss"],
                "val_ua": val_stats["ua"],
                "val_wa": val_stats["wa"],
                "val_macro_f1": val_stats["macro_f1"],
                "val_rows": val_stats["rows"],
                "skipped_unreadable": train_stats["skipped"] + val_stats["skipped"],
                "epoch_seconds": round(seconds, 3),
                "rows_per_second": round(train_stats["rows"] / max(seconds, 1e-9), 2),
            }
            self._update_best(epoch, metrics)
            self.state["epoch"] = epoch
            self.state["history"].append({**metrics, "attempt": len(self.state["attempts"]) - 1})
            self.save_checkpoint(epoch, metrics, val_stats["confusion_matrix"])
            if self.rank == 0:
                # The one-line progress log. Logged, not printed: Ray Train tees print() to
                # stdout and its logger, which shows every line twice on the driver.
                logger.info(
                    f"[{self.cfg.job}] epoch {epoch}/{epochs} step {metrics['global_step']} "
                    f"train_loss {metrics['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} "
                    f"val_ua {metrics['val_ua']:.3f} val_wa {metrics['val_wa']:.3f} val_f1 {metrics['val_macro_f1']:.3f} "
                    f"({metrics['train_rows']} rows, {seconds:.1f}s)"
                )

    def _update_best(self, epoch: int, metrics: dict) -> None:
        name, mode = self.cfg.checkpoint.metric, self.cfg.checkpoint.mode
        value, best = metrics[name], self.state["best"]
        if best is None or (value > best["value"] if mode == "max" else value < best["value"]):
            self.state["best"] = {"epoch": epoch, "metric": name, "value": value}

    def _loss(self, logits, batch):
        """Per-row loss, weighted: unreadable rows and unknown labels weigh 0."""
        import torch
        import torch.nn.functional as F

        label = batch["label"].long()
        weight = (batch["ok"] & (label >= 0)).float()
        label = label.clamp_min(0)
        if self.class_weights is not None:
            weight = weight * self.class_weights[label]
        logits = logits.float()
        if self.tcfg.label_mode == "soft":
            target = soft_targets(batch["target"], self.tcfg.soft_temperature)
            per_row = -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1)
        else:
            per_row = F.cross_entropy(logits, label, reduction="none", label_smoothing=self.tcfg.label_smoothing)
        return (per_row * weight).sum() / weight.sum().clamp_min(1e-8), per_row, weight

    def _run_epoch(self, shard, train: bool) -> dict:
        import torch

        from trainer.features import crop_collate
        from trainer.metrics import summarize

        num_classes = len(self.label_names)
        self.model.train(train)
        if train and self.freeze_encoder:
            self.unwrapped.encoder.eval()  # a linear probe keeps the encoder's BatchNorm statistics
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        weight_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)  # rows, correct, skipped
        cm = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=self.device)
        cropping = train and self.cfg.cached_train
        batches = shard.iter_torch_batches(
            batch_size=self.tcfg.batch_size,
            device=self.device,
            local_shuffle_buffer_size=(self.tcfg.shuffle_buffer or None) if train else None,
            # Fetching, formatting and (for the cache) cropping run in Ray's prefetch threads,
            # overlapping the step; on a GPU the batch is copied from pinned memory.
            prefetch_batches=self.cfg.prefetch_batches,
            collate_fn=crop_collate(self.cfg.features.max_frames) if cropping else None,
            pin_memory=self.device.type == "cuda",
        )
        grad = contextlib.nullcontext() if train else torch.no_grad()
        with grad:
            for batch in batches:
                with self._autocast():
                    logits = self.model(batch["features"], batch["n_frames"])
                loss, per_row, weight = self._loss(logits, batch)
                if train:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    if self.cfg.optim.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.state["global_step"] += 1
                valid = batch["ok"] & (batch["label"] >= 0)
                pred = logits.argmax(dim=-1)
                loss_sum += (per_row.detach() * weight).sum().double()
                weight_sum += weight.sum().double()
                counts += torch.stack([valid.sum(), (valid & (pred == batch["label"])).sum(), (~batch["ok"]).sum()]).double()
                idx = batch["label"][valid] * num_classes + pred[valid]
                cm += torch.bincount(idx, minlength=num_classes * num_classes).double()
        stats = torch.cat([loss_sum[None], weight_sum[None], counts, cm])
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stats)  # every worker sees the metrics of the whole split
        stats = stats.cpu().numpy()
        rows = int(stats[2])
        summary = summarize(stats[5:].astype("int64").reshape(num_classes, num_classes), self.label_names)
        return {
            "loss": float(stats[0] / max(stats[1], 1e-8)),
            "rows": rows,
            "acc": float(stats[3] / rows) if rows else 0.0,
            "skipped": int(stats[4]),
            "ua": summary["ua"],
            "wa": summary["wa"],
            "macro_f1": summary["macro_f1"],
            "confusion_matrix": summary["confusion_matrix"],
        }

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, epoch: int, metrics: dict, confusion_matrix: list) -> None:
        """Every worker reports; rank 0 attaches the checkpoint (model, optimizer, history)."""
        import ray.train

        from trainer.checkpoint import write_checkpoint

        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="lanser-ckpt-") as directory:
            write_checkpoint(
                directory,
                model_state=self.unwrapped.state_dict(),
                train_state={
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                },
                meta={
                    **self.state,
                    "job": self.cfg.job,
                    "taxonomy": self.cfg.taxonomy,
                    "label_names": self.label_names,
                    "model": self.cfg.model.to_dict(),
                    "features": self.cfg.features.to_dict(),
                    "metrics": metrics,
                    "val_confusion_matrix": confusion_matrix,
                    "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(directory),
                checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}",
            )

    def cleanup(self) -> None:
        import gc

        self.train_shard = self.val_shard = None
        self.model = self.unwrapped = self.optimizer = None
        gc.collect()


def train_loop_per_worker(config: dict[str, RecipeConfig]) -> None:
    """The function TorchTrainer runs on every worker; ``config["recipe"]`` is the run's
    :class:`RecipeConfig` (``train_loop_config`` must be a dict)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    recipe = SERTrainRecipe(config["recipe"])
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
