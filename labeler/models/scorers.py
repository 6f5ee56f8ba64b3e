"""Entailment scorers: one score per (premise, hypothesis), behind one interface.

- ``nli``: a transformers sequence-classification NLI model (LanSER's method). The
  entailment class is found from the model's ``label2id``; ``raw`` is the entailment
  logit and ``probs`` its softmax across the taxonomy's labels, exactly what the Hugging
  Face ``zero-shot-classification`` pipeline computes with ``multi_label=False``.
- ``embedding``: cosine similarity of sentence embeddings (a cheap proxy, not entailment);
  ``probs`` is ``softmax(cosine / temperature)``.

Knows nothing of Ray. A later backend (LLM scoring on vLLM) implements the same
``score(premises, hypotheses) -> ScoreResult``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labeler.models.registry import resolve_model
from labeler.errors import ModelLoadError


@dataclass(frozen=True)
class ScoreResult:
    raw: np.ndarray  # float32 [num_premises, num_hypotheses], backend's own scale
    probs: np.ndarray  # float32 [num_premises, num_hypotheses], rows sum to 1


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


class Scorer:
    backend: str = ""
    model_name: str = ""

    @property
    def name(self) -> str:
        """Provenance string stored in the ``scorer`` column: ``backend:model``."""
        return f"{self.backend}:{self.model_name}"

    def score(self, premises: Sequence[str], hypotheses: Sequence[str]) -> ScoreResult:
        """Every premise against every hypothesis."""
        pairs = [(p, h) for p in range(len(premises)) for h in range(len(hypotheses))]
        raw = self.score_pairs(premises, hypotheses, pairs).reshape(len(premises), len(hypotheses))
        return ScoreResult(raw, self.to_probs(raw))

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str], pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """Raw scores of the given (premise index, hypothesis index) pairs only (the rest may be cached)."""
        raise NotImplementedError

    def to_probs(self, raw: np.ndarray) -> np.ndarray:
        """Per-premise probability over the hypotheses from a full raw matrix."""
        return probs_for_backend(self.backend, raw, getattr(self, "temperature", 1.0))


def _torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _set_threads(device: str, threads: int) -> None:
    import torch

    if device == "cpu" and threads > 0:
        torch.set_num_threads(threads)


def find_entailment_index(label2id: dict) -> int:
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


class NLIScorer(Scorer):
    backend = "nli"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        half_precision: bool = True,
        max_length: int = 256,
        pair_batch_size: int = 256,
        pair_token_budget: int = 1024,
        torch_threads: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_name = model
        self.device = _torch_device(device)
        _set_threads(self.device, torch_threads)
        path = resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load NLI model {model!r}: {exc}") from exc
        self.entail_idx = find_entailment_index(self.model.config.label2id)
        if self.device == "cuda" and half_precision:
            self.model = self.model.half()
        self.model.to(self.device).eval()
        self.max_length = max_length
        self.pair_batch_size = pair_batch_size
        self.pair_token_budget = pair_token_budget
        self._torch = torch

    def score_pairs(self, premises, hypotheses, pairs) -> np.ndarray:
        torch = self._torch
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        enc = self.tokenizer(
            [premises[p] for p, _ in pairs],
            [hypotheses[h] for _, h in pairs],
            truncation="only_first",
            max_length=self.max_length,
        )
        lengths = [len(x) for x in enc["input_ids"]]
        flat = np.zeros(len(pairs), dtype=np.float32)
        with torch.inference_mode():
            for idx in token_budget_batches(lengths, self.pair_token_budget, self.pair_batch_size):
                features = [{k: enc[k][i] for k in enc.keys()} for i in idx]
                batch = self.tokenizer.pad(features, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch).logits.float()
                flat[idx] = logits[:, self.entail_idx].cpu().numpy()
        return flat


class EmbeddingScorer(Scorer):
    backend = "embedding"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        temperature: float = 0.05,
        batch_size: int = 64,
        torch_threads: int = 0,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.device = _torch_device(device)
        _set_threads(self.device, torch_threads)
        try:
            self.model = SentenceTransformer(resolve_model(model), device=self.device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load sentence-embedding model {model!r}: {exc}") from exc
        self.temperature = temperature
        self.batch_size = batch_size
        self._hyp_cache: dict[tuple[str, ...], np.ndarray] = {}

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )

    def score_pairs(self, premises, hypotheses, pairs) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        key = tuple(hypotheses)
        if key not in self._hyp_cache:
            self._hyp_cache[key] = self._encode(hypotheses)
        hyp = self._hyp_cache[key]
        used = sorted({p for p, _ in pairs})
        emb = dict(zip(used, self._encode([premises[p] for p in used])))
        return np.array([float(emb[p] @ hyp[h]) for p, h in pairs], dtype=np.float32)


def probs_for_backend(backend: str, raw: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The backend's raw -> probability rule, usable without loading its model: softmax over
    the labels of the entailment logits (nli), of the yes/no log-odds (llm) or of
    cosine / temperature (embedding)."""
    if backend == "embedding":
        return softmax(raw / temperature, axis=1)
    return softmax(raw, axis=1)


def make_scorer(cfg) -> Scorer:
    """Build the scorer a :class:`labeler.config.ScorerConfig` describes."""
    threads = cfg.torch_threads or max(1, math.ceil(cfg.num_cpus))
    if cfg.backend == "llm" or getattr(cfg, "engine", "transformers") == "vllm":
        from labeler.models.llm import make_llm_scorer

        return make_llm_scorer(cfg)
    if cfg.backend == "nli":
        return NLIScorer(
            cfg.model,
            device=cfg.device,
            half_precision=cfg.half_precision,
            max_length=cfg.max_length,
            pair_batch_size=cfg.pair_batch_size,
            pair_token_budget=cfg.pair_token_budget,
            torch_threads=threads,
        )
    if cfg.backend == "embedding":
        return EmbeddingScorer(
            cfg.model, device=cfg.device, temperature=cfg.temperature, batch_size=cfg.pair_batch_size, torch_threads=threads
        )
    raise ValueError(f"unknown scorer backend {cfg.backend!r}")
