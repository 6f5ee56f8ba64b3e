"""The checkpoint directory format, and finding and loading checkpoints.

A checkpoint is a directory, local or under an ``s3://`` / ``gs://`` storage path::

    meta.json        format, epoch (numbered from 1: ``epoch_base: 1``), global_step,
                     taxonomy + label names, model and feature settings, this epoch's
                     metrics, the run's history and attempts so far
    model.pt         the model's state_dict (encoder.* and head.*; a pretrained speech
                     encoder's backbone weights included, frozen or not)
    train_state.pt   optimizer, LR scheduler and grad-scaler state (for resuming)

``meta.json`` holds all that ``evaluate`` and ``finetune`` need to rebuild the model and
featurize as in training.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from typing import TYPE_CHECKING, Iterator

from trainer.errors import CheckpointError
from trainer.reports import EPOCH_BASE, REPORT, renumber_epochs

if TYPE_CHECKING:
    import ray.train

    from trainer.model import SERModel

FORMAT = "lanser-ser/1"
META = "meta.json"
MODEL = "model.pt"
TRAIN_STATE = "train_state.pt"


def _is_local(ref: str) -> bool:
    from labeler.io import is_local

    return is_local(ref)


def resolve_checkpoint(ref: str) -> str:
    """A checkpoint directory for ``ref``: the directory itself, or, for a run's
    ``output_dir`` (holding ``report.json``), the best checkpoint the report names."""
    from labeler.io import local_path

    if _is_local(ref):
        path = os.path.abspath(os.path.expanduser(local_path(ref)))
        if os.path.isfile(os.path.join(path, META)):
            return path
        report = os.path.join(path, REPORT)
        if os.path.isfile(report):
            with open(report, encoding="utf-8") as f:
                best = (json.load(f).get("best_checkpoint") or {}).get("path")
            if not best:
                raise CheckpointError(f"{report} names no best checkpoint (did the run finish an epoch?)")
            return best
        raise CheckpointError(
            f"{ref} is neither a checkpoint (a directory with {META}, {MODEL}) nor a run output_dir with {REPORT}"
        )
    return ref.rstrip("/")


@contextlib.contextmanager
def open_checkpoint(ref: str) -> Iterator[str]:
    """Yields a local directory with the checkpoint's files (downloaded for a URI)."""
    path = resolve_checkpoint(ref)
    if _is_local(path):
        yield path
        return
    import ray.train

    with ray.train.Checkpoint(path).as_directory() as local:
        if not os.path.isfile(os.path.join(local, META)):
            raise CheckpointError(f"{path} holds no {META}: not a lanser checkpoint")
        yield local


def _checked_meta(meta: dict, where: str) -> dict:
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    # A checkpoint written before epochs were numbered from 1 is renumbered here, the one
    # place every meta.json is read through (resuming included): see renumber_epochs.
    return renumber_epochs(meta)


def read_meta(directory: str) -> dict:
    """A local checkpoint directory's ``meta.json``, epochs numbered from 1."""
    with open(os.path.join(directory, META), encoding="utf-8") as f:
        meta = json.load(f)
    return _checked_meta(meta, directory)


def read_checkpoint_meta(checkpoint: ray.train.Checkpoint) -> dict:
    """The ``meta.json`` of a Ray Train checkpoint (local or in cloud storage), read through
    the checkpoint's filesystem without downloading its model."""
    path = posixpath.join(checkpoint.path, META)
    try:
        with checkpoint.filesystem.open_input_stream(path) as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint.path} holds no {META}: not a lanser checkpoint") from None
    return _checked_meta(meta, checkpoint.path)


def write_checkpoint(directory: str, *, model_state: dict, train_state: dict | None, meta: dict) -> None:
    import torch

    os.makedirs(directory, exist_ok=True)
    torch.save(model_state, os.path.join(directory, MODEL))
    if train_state is not None:
        torch.save(train_state, os.path.join(directory, TRAIN_STATE))
    with open(os.path.join(directory, META), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "epoch_base": EPOCH_BASE, **meta}, f, indent=1)


def load_states(directory: str, *, train_state: bool = False, device: str = "cpu") -> tuple[dict, dict, dict | None]:
    """(meta, model state_dict, train state or None) from a local checkpoint directory."""
    import torch

    meta = read_meta(directory)
    model_state = torch.load(os.path.join(directory, MODEL), map_location=device, weights_only=True)
    ts = None
    if train_state and os.path.isfile(os.path.join(directory, TRAIN_STATE)):
        ts = torch.load(os.path.join(directory, TRAIN_STATE), map_location=device, weights_only=False)
    return meta, model_state, ts


def load_model(ref: str, device: str = "cpu") -> tuple[SERModel, dict]:
    """(model in eval mode, meta) from any checkpoint reference: a :class:`SERModel`, or a
    pretrained-encoder model rebuilt from the configuration its ``meta.json`` keeps."""
    from trainer.model import build_model, spec_from_dict

    with open_checkpoint(ref) as directory:
        meta, state, _ = load_states(directory, device=device)
    model = build_model(spec_from_dict(meta["model"]), len(meta["label_names"]))
    model.load_state_dict(state)
    return model.to(device).eval(), meta
