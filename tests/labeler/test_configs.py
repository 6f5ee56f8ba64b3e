"""Every shipped config validates, starts with the command that runs it, and names real settings."""

from pathlib import Path

import pytest

from labeler.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "labeler" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "lanser-label label --config labeler/configs/" + path.name in first
    cfg = load_config(str(path))
    assert cfg.asr.model and cfg.scorer.model


def test_gpu_config_uses_gpus_and_fp16():
    cfg = load_config(str(CONFIGS[[p.name for p in CONFIGS].index("gpu.yaml")]))
    assert cfg.asr.num_gpus >= 1 and cfg.asr.compute_type == "float16" and cfg.scorer.num_gpus > 0
