"""Embedding export of the pretrained encoder through the CLI, on a RAVDESS-layout corpus of
synthetic clips. The sweep, its linear probe and evaluate's metrics are tested on the
label-efficiency data (test_label_efficiency.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

REPO = Path(__file__).resolve().parents[2]
SPLIT = {"test_groups": ["Actor_07", "Actor_08"], "val_groups": ["Actor_06"]}


def test_cli_exports_pretrained_encoder_embeddings_for_another_taxonomy(pretrained_run, ravdess_root, ray_local, tmp_path):
    """The ekman-pretrained encoder, probed on iemocap4-labeled clips: no metrics (the heads
    differ), embeddings for every clip."""
    import yaml

    pre_cfg, _ = pretrained_run
    config = {
        "checkpoint": pre_cfg.output_dir,
        "data": {"kind": "ravdess", "path": ravdess_root, "taxonomy": "iemocap4", **SPLIT},
        "split": "all",
        "inference": {"cpus": 0.5, "data_cpus": 0.5},
        "output_dir": str(tmp_path / "probe"),
        "progress": False,
    }
    path = tmp_path / "evaluate.yaml"
    path.write_text(f"# lanser-train evaluate --config {path}\n" + yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, "-m", "trainer", "evaluate", "--config", str(path), "--embeddings"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "probe" / "evaluation.json").read_text())
    assert report["metrics"] is None and "ekman" in report["metrics_skipped"]
    table = pads.dataset(str(tmp_path / "probe" / "embeddings"), format="parquet").to_table()
    assert table.num_rows == 8 * 4 * 4 and table.column("label").null_count == 0
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    labels = np.array(table.column("label").to_pylist())
    # Embeddings carry the class: each clip's nearest other clip mostly shares its label.
    dist = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert np.mean(labels[dist.argmin(1)] == labels) >= 0.75
