"""NLI cross-encoder scorers (``scorer.backend: nli``, LanSER's method), on transformers or vLLM.

``raw`` is the entailment logit, the entailment class found from the model's ``label2id``;
``probs`` is its softmax across the taxonomy's labels, exactly what the Hugging Face
``zero-shot-classification`` pipeline computes with ``multi_label=False``. Both engines
tokenize a pair the same way, so their scores are equal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from labeler.config import ScorerConfig
from labeler.errors import ModelLoadError
from labeler.models.base import (Pair, Scorer, find_entailment_index, set_threads, token_budget_batches, torch_device, torch_threads,
                                 weights_dtype)
from labeler.models.registry import resolve_model
from labeler.models.vllm_engine import VllmEngine, vllm_dtype, vllm_engine_args


class NLIScorer(Scorer):
    """A transformers sequence-classification NLI model, batched by token budget."""

    backend = "nli"

    def __init__(self, cfg: ScorerConfig) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_name = cfg.model
        self.device = torch_device(cfg.device)
        set_threads(self.device, torch_threads(cfg))
        path = resolve_model(cfg.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load NLI model {cfg.model!r}: {exc}") from exc
        self.entail_idx = find_entailment_index(self.model.config.label2id)
        # scorer.dtype is not read here (the first release ignored it, and the nli cache key
        # leaves it out): fp16 on cuda with half_precision, else the weights as stored.
        if self.device == "cuda" and cfg.half_precision:
            self.model = self.model.half()
            self.dtype_reason = "nli on transformers, cuda with scorer.half_precision: float16"
        else:
            self.dtype_reason = f"nli on transformers, {self.device}: the weights' own dtype (scorer.dtype is for llm and vllm)"
        self.dtype = weights_dtype(self.model)
        self.model.to(self.device).eval()
        self.max_length = cfg.max_length
        self.pair_batch_size = cfg.pair_batch_size
        self.pair_token_budget = cfg.pair_token_budget
        self._torch = torch

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str], pairs: Sequence[Pair]) -> np.ndarray:
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


class VllmNLIScorer(Scorer):
    """An NLI cross-encoder on vLLM's pooling runner (``backend: nli`` + ``engine: vllm``).

    Pairs are tokenized exactly as :class:`NLIScorer` does (``truncation="only_first"``,
    ``max_length``); the second segment's start is passed as ``compressed_token_type_ids``
    (vLLM ignores a prompt's own ``token_type_ids``); logits come without activation, so
    ``raw`` is the entailment logit, as in :class:`NLIScorer`."""

    backend = "nli"

    def __init__(self, cfg: ScorerConfig) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.model_name = cfg.model
        self.engine_name = "vllm"
        path = resolve_model(cfg.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            label2id = AutoConfig.from_pretrained(path).label2id
        except Exception as exc:
            raise ModelLoadError(f"cannot load NLI model {cfg.model!r}: {type(exc).__name__}: {exc}") from exc
        self.entail_idx = find_entailment_index(label2id)
        self.max_length = cfg.max_length
        dtype, self.dtype_reason = vllm_dtype(cfg)
        args = vllm_engine_args(path, cfg, max_model_len=cfg.max_length, dtype=dtype, runner="pooling")
        args.pop("enable_prefix_caching", None)  # encoder-only: nothing to share
        self.engine = VllmEngine(cfg.model, args)
        self.dtype = self.engine.dtype

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str], pairs: Sequence[Pair]) -> np.ndarray:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        enc = self.tokenizer([premises[p] for p, _ in pairs], [hypotheses[h] for _, h in pairs],
                             truncation="only_first", max_length=self.max_length)
        types = enc.get("token_type_ids")
        prompts, params = [], []
        for i, ids in enumerate(enc["input_ids"]):
            extra = None
            if types is not None and 1 in types[i]:
                extra = {"compressed_token_type_ids": types[i].index(1)}
            prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
            params.append(PoolingParams(use_activation=False, extra_kwargs=extra))
        outs = self.engine.call("classify", prompts, pooling_params=params, use_tqdm=False)
        return np.array([o.outputs.probs[self.entail_idx] for o in outs], dtype=np.float32)

    def close(self) -> None:
        self.engine.close()
