"""The scorer interface every entailment backend implements, and the helpers they share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from labeler.config import ScorerConfig
from labeler.errors import ModelLoadError

Pair = tuple[int, int]
"""(premise index, hypothesis index)."""


@dataclass(frozen=True)
class ScoreResult:
    raw: np.ndarray  # float32 [num_premises, num_hypotheses], backend's own scale
    probs: np.ndarray  # float32 [num_premises, num_hypotheses], rows sum to 1


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def probs_for_backend(backend: str, raw: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The backend's raw -> probability rule, usable without loading its model: softmax over
    the labels of the entailment logits (nli), of the yes/no log-odds (llm) or of
    cosine / temperature (embedding)."""
    if backend == "embedding":
        return softmax(raw / temperature, axis=1)
    return softmax(raw, axis=1)


def flatten_sets(sets: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """An ensemble's hypothesis sets (one list of labels' hypotheses per template) as the
    distinct hypotheses to score (first-seen order) and ``index[t, l]``, the position of
    template ``t``'s hypothesis of label ``l`` among them."""
    flat: list[str] = []
    where: dict[str, int] = {}
    index = np.zeros((len(sets), len(sets[0]) if sets else 0), dtype=np.int64)
    for t, hyps in enumerate(sets):
        for lab, h in enumerate(hyps):
            if h not in where:
                where[h] = len(flat)
                flat.append(h)
            index[t, lab] = where[h]
    return flat, index


def ensemble_probs(backend: str, raw: np.ndarray, index: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A template ensemble's label probabilities: each template's probabilities (the
    backend's rule over the labels, :func:`probs_for_backend`) averaged over the templates;
    and the raw scores averaged the same way. ``raw`` is ``[premises, distinct hypotheses]``,
    ``index`` from :func:`flatten_sets`. One template gives exactly the single-template
    probabilities."""
    raw = np.asarray(raw, dtype=np.float32)
    probs = np.mean([probs_for_backend(backend, raw[:, idx], temperature) for idx in index], axis=0).astype(np.float32)
    raw_mean = np.mean([raw[:, idx] for idx in index], axis=0).astype(np.float32)
    return probs, raw_mean


class Scorer:
    """One score per (premise, hypothesis): load once, then :meth:`score` / :meth:`score_pairs`."""

    backend: str = ""
    model_name: str = ""
    temperature: float = 1.0  # of the raw -> probs rule; only the embedding backend uses it
    dtype: str = "unknown"  # what the model computes in, as it settled on this machine
    dtype_reason: str = "not reported by this scorer"  # why; both go to the run manifest

    @property
    def name(self) -> str:
        """Provenance string stored in the ``scorer`` column: ``backend:model``."""
        return f"{self.backend}:{self.model_name}"

    def score(self, premises: Sequence[str], hypotheses: Sequence[str]) -> ScoreResult:
        """Every premise against every hypothesis."""
        pairs = [(p, h) for p in range(len(premises)) for h in range(len(hypotheses))]
        raw = self.score_pairs(premises, hypotheses, pairs).reshape(len(premises), len(hypotheses))
        return ScoreResult(raw, self.to_probs(raw))

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str], pairs: Sequence[Pair]) -> np.ndarray:
        """Raw scores (float32, one per pair, in order) of the given pairs only (the rest may be cached)."""
        raise NotImplementedError

    def to_probs(self, raw: np.ndarray) -> np.ndarray:
        """Per-premise probability over the hypotheses from a full raw matrix."""
        return probs_for_backend(self.backend, raw, self.temperature)

    def close(self) -> None:
        """Release what the model holds (an engine process, memory); nothing by default."""


def weights_dtype(model) -> str:
    """The dtype of a torch model's first parameter, as a name (``float32``)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def torch_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_threads(cfg: ScorerConfig) -> int:
    """torch intra-op threads of a scorer: ``scorer.torch_threads``, or 0 = ceil(num_cpus)."""
    return cfg.torch_threads or max(1, math.ceil(cfg.num_cpus))


def set_threads(device: str, threads: int) -> None:
    """torch's intra-op threads on cpu (process-wide; ignored on other devices or for 0)."""
    import torch

    if device == "cpu" and threads > 0:
        torch.set_num_threads(threads)


def find_entailment_index(label2id: Mapping[str, int]) -> int:
    """Index of the entailment class in a model's ``label2id`` (never assumed)."""
    norm = {str(k).lower().replace("-", "_"): int(v) for k, v in (label2id or {}).items()}
    if "entailment" in norm:
        return norm["entailment"]
    candidates = [v for k, v in norm.items() if k.startswith("entail")]
    if len(candidates) == 1:
        return candidates[0]
    raise ModelLoadError(
        f"cannot find the entailment class in the model's label2id {label2id!r}: an NLI model "
        "must name one class 'entailment' (config.json id2label/label2id)"
    )


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Indices grouped into forward passes of similar length: sorted by length, each batch
    closed before its padded size (rows x longest row) would pass ``token_budget`` or its
    rows ``max_rows``. Short pairs travel in large batches, long ones in small batches,
    and little compute goes to padding. A row longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so this row is the longest so far: the padded size if added.
        if current and ((len(current) + 1) * lengths[i] > token_budget or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
