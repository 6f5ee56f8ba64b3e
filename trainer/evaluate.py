"""Evaluation and embedding export: batch inference with Ray Data.

A split's rows stream through decode + log-mel tasks into :class:`Predictor` actors (the
model loaded once per actor); only the prediction columns come back to the driver, which
computes the metrics. Embeddings are written from the actors' output as Parquet.

    >>> from trainer.config import load_config
    >>> from trainer.evaluate import evaluate
    >>> evaluate(load_config("evaluate", "trainer/configs/evaluate.yaml"))["metrics"]["ua"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.errors import JobError
from trainer.reports import write_json

if TYPE_CHECKING:
    from trainer.config import EvaluateConfig
    from trainer.ingest import PreparedData


class Predictor:
    """Ray Data actor: featurized rows -> predictions (and embeddings)."""

    def __init__(self, checkpoint: str, use_gpu: bool, embeddings: bool, data_label_names: list[str]):
        import torch

        from trainer.checkpoint import load_model

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, meta = load_model(checkpoint, self.device)
        self.pred_names = np.asarray(meta["label_names"], dtype=object)
        self.data_names = np.asarray(data_label_names + [None], dtype=object)  # index -1 -> None
        self.embeddings = embeddings

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa
        import torch

        ok = np.asarray(batch["ok"], dtype=bool)
        with torch.inference_mode():
            feats = torch.from_numpy(np.ascontiguousarray(batch["features"])).to(self.device)
            n_frames = torch.from_numpy(np.asarray(batch["n_frames"])).to(self.device)
            emb = self.model.embed(feats, n_frames)
            pred = self.model.head(emb).argmax(dim=-1).cpu().numpy()
        label = np.asarray(batch["label"], dtype=np.int64)
        columns = {
            "utt_id": pa.array(list(batch["utt_id"]), pa.string()),
            "label_index": pa.array(label, pa.int32(), mask=label < 0),
            "label": pa.array(self.data_names[label], pa.string()),
            "pred_index": pa.array(pred, pa.int32(), mask=~ok),
            "pred_label": pa.array(np.where(ok, self.pred_names[pred], None), pa.string()),
            "ok": pa.array(ok),
        }
        if self.embeddings:
            values = emb.float().cpu().numpy().astype(np.float32)
            dim = values.shape[1]
            offsets = pa.array(np.arange(len(ok) + 1, dtype=np.int32) * dim)
            columns["embedding"] = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)), mask=pa.array(~ok))
        return pa.table(columns)


def evaluate_rows(
    checkpoint: str,
    prepared: PreparedData,
    *,
    split: str,
    concurrency: int = 1,
    use_gpu: bool = False,
    cpus: float = 1.0,
    batch_size: int = 32,
    data_cpus: float = 1.0,
    data_batch_size: int = 16,
    embeddings_dir: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``prepared``'s ``split``; writes embeddings when asked.

    Metrics are computed when the checkpoint's labels are the data's labels; otherwise
    (e.g. an ekman-pretrained encoder probed on an iemocap4 corpus) only embeddings make
    sense and ``metrics`` is None with the reason.
    """
    import pyarrow.dataset as pads
    import ray.data

    from trainer.checkpoint import open_checkpoint, read_meta
    from trainer.features import FeatureSpec
    from trainer.ingest import featurize
    from trainer.metrics import confusion_matrix, summarize

    with open_checkpoint(checkpoint) as directory:
        meta = read_meta(directory)
    names = prepared.label_names
    rows = featurize(
        prepared.rows(split), spec=FeatureSpec(**meta["features"]), num_classes=len(names), train=False,
        data_cpus=data_cpus, batch_size=data_batch_size, base_dir=prepared.base_dir, keep_ids=True,
    )
    preds = rows.map_batches(
        Predictor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "use_gpu": use_gpu, "embeddings": embeddings_dir is not None, "data_label_names": names},
        batch_format="numpy",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cpus,
        num_gpus=1 if use_gpu else 0,
    )
    small = ["label_index", "pred_index", "ok"]
    if embeddings_dir is not None:
        preds.write_parquet(embeddings_dir)
        table = pads.dataset(embeddings_dir, format="parquet").to_table(columns=small)
    else:
        import pyarrow as pa

        table = pa.concat_tables(list(preds.select_columns(small).iter_batches(batch_format="pyarrow", batch_size=4096)))
    ok = np.asarray(table.column("ok").to_pylist(), dtype=bool)
    label = np.asarray(table.column("label_index").fill_null(-1).to_pylist(), dtype=np.int64)
    pred = np.asarray(table.column("pred_index").fill_null(-1).to_pylist(), dtype=np.int64)
    scored = ok & (label >= 0)
    out = {
        "checkpoint": checkpoint,
        "split": split,
        "rows": int(len(ok)),
        "unreadable": int((~ok).sum()),
        "scored": int(scored.sum()),
        "metrics": None,
    }
    if meta["label_names"] != names:
        out["metrics_skipped"] = (
            f"the checkpoint predicts {meta['taxonomy']['name']} labels {meta['label_names']}, the data has {names}; "
            "evaluate a checkpoint fine-tuned on this taxonomy, or use the embeddings"
        )
    else:
        out["metrics"] = summarize(confusion_matrix(label[scored], pred[scored], len(names)), names)
    return out


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """``lanser-train evaluate``: writes ``<output_dir>/evaluation.json`` (and embeddings)."""
    from trainer.checkpoint import resolve_checkpoint
    from trainer.ingest import prepare_data

    started = time.time()
    checkpoint = resolve_checkpoint(cfg.checkpoint)
    prepared = prepare_data(cfg.data)
    embeddings_dir = os.path.join(os.path.abspath(cfg.output_dir), "embeddings") if cfg.embeddings else None
    if embeddings_dir and os.path.isdir(embeddings_dir) and os.listdir(embeddings_dir):
        raise JobError(f"{embeddings_dir} already holds files; remove it or choose another output_dir")
    inf = cfg.inference
    result = evaluate_rows(
        checkpoint, prepared, split=cfg.split, concurrency=inf.concurrency, use_gpu=inf.use_gpu,
        cpus=inf.cpus, batch_size=inf.batch_size, data_cpus=inf.data_cpus, data_batch_size=inf.data_batch_size,
        embeddings_dir=embeddings_dir,
    )
    report = {
        "command": "evaluate",
        "status": "completed",
        "wall_time_s": round(time.time() - started, 2),
        **result,
        "embeddings": embeddings_dir,
        "data": prepared.summary,
        "config": cfg.model_dump(mode="json"),
    }
    write_json(os.path.join(cfg.output_dir, "evaluation.json"), report)
    return report
