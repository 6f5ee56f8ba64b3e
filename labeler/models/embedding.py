"""Sentence-embedding scorer (``scorer.backend: embedding``): a cheap proxy, not entailment.

``raw`` is the cosine similarity of the transcript's and the hypothesis' embeddings,
``probs`` is ``softmax(cosine / scorer.temperature)`` across the taxonomy's labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from labeler.config import ScorerConfig
from labeler.errors import ModelLoadError
from labeler.models.base import Pair, Scorer, set_threads, torch_device, torch_threads, weights_dtype
from labeler.models.registry import resolve_model


class EmbeddingScorer(Scorer):
    """A sentence-transformers model; each taxonomy's hypotheses are embedded once."""

    backend = "embedding"

    def __init__(self, cfg: ScorerConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = cfg.model
        self.device = torch_device(cfg.device)
        set_threads(self.device, torch_threads(cfg))
        try:
            self.model = SentenceTransformer(resolve_model(cfg.model), device=self.device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load sentence-embedding model {cfg.model!r}: {exc}") from exc
        self.dtype = weights_dtype(self.model)
        self.dtype_reason = "embedding: the weights' own dtype (scorer.dtype is for llm and vllm)"
        self.temperature = cfg.temperature
        self.batch_size = cfg.pair_batch_size
        self._hyp_cache: dict[tuple[str, ...], np.ndarray] = {}

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str], pairs: Sequence[Pair]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        key = tuple(hypotheses)
        if key not in self._hyp_cache:
            self._hyp_cache[key] = self._encode(hypotheses)
        hyp = self._hyp_cache[key]
        used = sorted({p for p, _ in pairs})
        emb = dict(zip(used, self._encode([premises[p] for p in used])))
        return np.array([float(emb[p] @ hyp[h]) for p, h in pairs], dtype=np.float32)
