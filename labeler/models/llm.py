"""Decoder-LLM entailment scorer (``scorer.backend: llm``), on vLLM or transformers.

For each (transcript, hypothesis) pair the model is asked whether the transcript supports
the hypothesis (:class:`~labeler.models.prompt.EntailmentPrompt`), and the answer is read
from its **next-token log-probabilities**, never from generated text, so every taxonomy
label always gets a score::

    raw   = logsumexp(log p(yes-tokens)) - logsumexp(log p(no-tokens))   # log-odds, nats
    probs = softmax over the taxonomy's labels of raw                     # as the nli backend

``log p`` is normalized over the whole vocabulary, so probability mass on other tokens
lowers neither side's log-odds. ``engine: vllm`` and ``engine: transformers`` see the same
token ids; in fp32 they give the same values (to 2e-3, tested). ``dtype: auto`` is bf16
only where the hardware computes it (:mod:`labeler.models.device`); bf16 moved SmolLM2's
log-odds by up to 0.24 nats (``bench.llm``), which reorders labels whose scores lie closer
than that; compare engines in fp32.
"""

from __future__ import annotations

import gc
from typing import Sequence

import numpy as np

from labeler.config import ScorerConfig
from labeler.errors import ConfigError, ModelLoadError
from labeler.models.base import Pair, Scorer, set_threads, token_budget_batches, torch_device, torch_threads
from labeler.models.device import choose_dtype
from labeler.models.prompt import EntailmentPrompt, group_by_premise
from labeler.models.registry import resolve_model
from labeler.models.vllm_engine import VllmEngine, vllm_dtype, vllm_engine_args


class _VllmCausalLM:
    """vLLM runner: ``SamplingParams(max_tokens=1, logprob_token_ids=[...])`` per prompt."""

    def __init__(self, cfg: ScorerConfig, path: str) -> None:
        dtype, self.dtype_reason = vllm_dtype(cfg)
        self.engine = VllmEngine(cfg.model, vllm_engine_args(path, cfg, max_model_len=cfg.max_model_len, dtype=dtype))
        self.dtype = self.engine.dtype  # as the engine resolved it (a GPU's auto)
        self.tokenizer = self.engine.llm.get_tokenizer()
        # Prompt tokens sent and those vLLM served from its prefix cache (cumulative).
        self.stats = {"prompt_tokens": 0, "cached_tokens": 0}

    def answer_logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # temperature 0: the logprobs are the model's raw next-token log-softmax, and the
        # one sampled token (discarded) is deterministic.
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids), detokenize=False)
        outs = self.engine.call("generate", [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        rows = np.empty((len(prompts), len(token_ids)), dtype=np.float64)
        for i, out in enumerate(outs):
            lp = out.outputs[0].logprobs[0]
            rows[i] = [lp[t].logprob for t in token_ids]
            self.stats["prompt_tokens"] += len(prompts[i])
            self.stats["cached_tokens"] += int(out.num_cached_tokens or 0)
        return rows

    def close(self) -> None:
        self.engine.close()


class _HFCausalLM:
    """transformers runner: ``AutoModelForCausalLM`` (``auto``: fp32 on CPU, fp16 on cuda with
    ``half_precision``), left-padded batches with
    explicit position ids (so a padded row sees the same positions as alone), log-softmax of
    the last position only."""

    def __init__(self, cfg: ScorerConfig, path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch_device(cfg.device)
        set_threads(self.device, torch_threads(cfg))
        self.dtype, self.dtype_reason = choose_dtype(cfg.dtype, "transformers", self.device, half_precision=cfg.half_precision)
        torch_dtype = getattr(torch, self.dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        except Exception as exc:
            raise ModelLoadError(f"cannot load causal LM {cfg.model!r}: {type(exc).__name__}: {exc}") from exc
        self.model.to(self.device).eval()
        self.batch_size = cfg.pair_batch_size
        self.token_budget = cfg.pair_token_budget
        self._torch = torch

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches of at most ``batch_size`` prompts and
        ``token_budget`` padded tokens (a longer prompt still gets a batch of its own)."""
        return token_budget_batches(lengths, self.token_budget, self.batch_size)

    def answer_logprobs(self, prompts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        torch = self._torch
        rows = np.empty((len(prompts), len(token_ids)), dtype=np.float64)
        idx_t = torch.tensor(token_ids, device=self.device)
        with torch.inference_mode():
            for idx in self.batches([len(p) for p in prompts]):
                width = max(len(prompts[i]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    n = len(prompts[i])
                    ids[r, width - n :] = torch.tensor(prompts[i])
                    mask[r, width - n :] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), position_ids=pos.to(self.device),
                    logits_to_keep=1, use_cache=False,
                )
                lp = out.logits[:, -1, :].float().log_softmax(-1)
                rows[idx] = lp.index_select(1, idx_t).double().cpu().numpy()
        return rows

    def close(self) -> None:
        self.model = None
        gc.collect()


class LLMScorer(Scorer):
    """Decoder-LLM entailment: log-odds of "yes" vs "no" for each (transcript, hypothesis)."""

    backend = "llm"

    def __init__(self, cfg: ScorerConfig) -> None:
        self.model_name = cfg.model
        self.engine_name = cfg.engine
        path = resolve_model(cfg.model)
        if cfg.engine == "vllm":
            self.lm: _VllmCausalLM | _HFCausalLM | None = _VllmCausalLM(cfg, path)
        elif cfg.engine == "transformers":
            self.lm = _HFCausalLM(cfg, path)
        else:
            raise ConfigError(f"scorer.engine: unknown engine {cfg.engine!r} (transformers or vllm)")
        self.dtype, self.dtype_reason = self.lm.dtype, self.lm.dtype_reason
        try:
            self.prompt = EntailmentPrompt(self.lm.tokenizer, cfg.max_model_len)
        except Exception:
            self.close()
            raise

    def score_pairs(self, premises: Sequence[str], hypotheses: Sequence[str], pairs: Sequence[Pair]) -> np.ndarray:
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        if self.lm is None:
            raise ModelLoadError(f"the llm scorer for model {self.model_name!r} was closed")
        order = group_by_premise(pairs)
        ordered = [pairs[i] for i in order]
        prompts = self.prompt.prompts(premises, hypotheses, ordered)
        raw = self.prompt.log_odds(self.lm.answer_logprobs(prompts, self.prompt.answer_ids))
        out = np.empty(len(pairs), dtype=np.float32)
        out[order] = raw
        return out

    def close(self) -> None:
        if self.lm is not None:
            self.lm.close()
        self.lm = None
