"""Entailment: score every taxonomy label for every transcript, pick the weak label.

Rows with no speech or an empty transcript abstain instead of getting a made-up label.
Identical transcripts ("yeah", "okay") are scored once: within a batch, and across the
actor's batches through a memo of scored pairs. Pairs found in the score cache (earlier
runs, any taxonomy sharing the hypothesis) are not scored again; newly scored pairs go to
the score cache through the collector. The scorer model is loaded on the first batch that
needs it, so a fully cached relabel loads none.

A taxonomy with a template ensemble (``hypothesis_templates``) scores every distinct
hypothesis of every template; a label's probability is its mean over the templates
(:func:`labeler.models.base.ensemble_probs`), and ``raw_scores`` the mean raw score.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.config import AbstainConfig, LabelConfig
from labeler.stages.base import Stage, StageContext, columns


def abstain_before_scoring(text: Optional[str], no_speech_prob: Optional[float], avg_logprob: Optional[float],
                           cfg: AbstainConfig) -> Optional[str]:
    """Whisper's own silence rule, then an empty-transcript check; None = score it."""
    if no_speech_prob is None:
        return S.ABSTAIN_NO_SPEECH  # no speech segment was decoded at all (VAD found none)
    if no_speech_prob > cfg.no_speech_prob and (avg_logprob is None or avg_logprob < cfg.logprob_threshold):
        return S.ABSTAIN_NO_SPEECH
    if text is None or len("".join(text.split())) < max(cfg.min_chars, 1):
        return S.ABSTAIN_EMPTY_TRANSCRIPT
    return None


def top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmax, max, max - runner-up) per row."""
    idx = probs.argmax(axis=1)
    if probs.shape[1] > 1:
        part = np.partition(probs, -2, axis=1)
        top, second = part[:, -1], part[:, -2]
    else:
        top, second = probs[:, 0], np.zeros(len(probs), dtype=probs.dtype)
    return idx, top, top - second


class EntailStage(Stage):
    # Its busy time has been reported as "score" in run manifests since the first release.
    name = "score"
    reads = ("text", "no_speech_prob", "avg_logprob", "error")
    writes = ("status", "label", "label_index", "confidence", "margin", "scores", "raw_scores", "abstain_reason",
              "scorer", "template_hash")

    def __init__(self, cfg: LabelConfig, ctx: StageContext) -> None:
        from labeler.cache import ScoreCache, Shards

        super().__init__(cfg, ctx)
        self.scorer_cfg = cfg.scorer
        self.abstain = cfg.abstain
        self.scorer_name = f"{cfg.scorer.backend}:{cfg.scorer.model}"
        self.labels = ctx.taxonomy.label_names
        from labeler.models.base import flatten_sets

        # every distinct hypothesis (all templates of an ensemble), and where each label's is
        self.hypotheses, self.template_index = flatten_sets(ctx.taxonomy.hypothesis_sets)
        self.template_hash = ctx.taxonomy.template_hash
        self.scorer_key = cfg.scorer.key_hash()
        cache = Shards.of(ctx.score_cache) if cfg.cache.scores else None
        self.cache = cache if cache is not None else Shards.of(ScoreCache.empty(self.scorer_key))
        self.memo: dict[int, float] = {}
        self.memo_pairs = cfg.cache.memo_pairs
        self._scorer = None

    @classmethod
    def resources(cls, cfg: LabelConfig) -> dict[str, Any]:
        s = cfg.scorer
        res: dict[str, Any] = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus, "concurrency": s.concurrency, "batch_size": s.batch_size}
        if s.engine == "vllm":
            import os

            from labeler.models.vllm_engine import ENGINE_ENV

            res["runtime_env"] = {"env_vars": {k: os.environ.get(k, v) for k, v in ENGINE_ENV.items()}}
        return res

    @property
    def scorer(self):
        if self._scorer is None:
            from labeler.models.factory import make_scorer

            self._scorer = make_scorer(self.scorer_cfg)
            self.note(scorer_dtype=self._scorer.dtype, scorer_dtype_reason=self._scorer.dtype_reason)
        return self._scorer

    def _raw_scores(self, premises: list[str]) -> np.ndarray:
        """Full raw matrix for ``premises``: cache, then memo, then the model for the rest.
        Newly scored pairs go to the score cache."""
        from labeler.cache import pair_key, text_sha256

        H = len(self.hypotheses)
        keys = np.array([pair_key(self.scorer_key, p, h) for p in premises for h in self.hypotheses], dtype=np.uint64)
        digests = [text_sha256(p) for p in premises]
        found, raw = self.lookup(keys, np.repeat(self.cache.split(digests), H))
        n_cached = int(found.sum())
        todo = []
        for j in np.flatnonzero(~found):
            k = int(keys[j])
            if k in self.memo:
                raw[j] = self.memo[k]
                found[j] = True
            else:
                todo.append(int(j))
        self.count(n_pairs_cached=n_cached, n_pairs_memo=int(found.sum()) - n_cached, n_pairs_scored=len(todo))
        if todo:
            pairs = [(j // H, j % H) for j in todo]
            raw[todo] = self.scorer.score_pairs(premises, self.hypotheses, pairs)
            for j in todo:
                if len(self.memo) < self.memo_pairs:
                    self.memo[int(keys[j])] = float(raw[j])
            self.emit("scores", pa.table({
                "pair_key": pa.array(keys[todo], pa.uint64()),
                "text_sha256": pa.array([digests[p] for p, _ in pairs], pa.string()),
                "hypothesis": pa.array([self.hypotheses[h] for _, h in pairs], pa.string()),
                "raw_score": pa.array(raw[todo], pa.float32()),
                "scorer": pa.array([self.scorer_name] * len(todo), pa.string()),
                "created_at": pa.array([dt.datetime.now(dt.timezone.utc)] * len(todo), S.TIMESTAMP),
            }))
        return raw.reshape(len(premises), H)

    def lookup(self, keys: np.ndarray, shard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, raw scores where found) of pair keys, each in its score-cache shard
        (the shard of its text)."""
        found, raw = np.zeros(len(keys), bool), np.zeros(len(keys), np.float32)
        for cache, rows in self.cache.groups(shard):
            found[rows], raw[rows] = cache.lookup(keys[rows])
        return found, raw

    def process(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        texts = batch.column("text").to_pylist()
        nsp = batch.column("no_speech_prob").to_pylist()
        alp = batch.column("avg_logprob").to_pylist()
        errors = batch.column("error").to_pylist()

        out: dict[str, list] = {c: [None] * n for c in self.writes}
        status, reason = out["status"], out["abstain_reason"]
        to_score: dict[str, list[int]] = {}
        for i in range(n):
            if errors[i] is not None:
                status[i] = S.STATUS_ERROR
                continue
            r = abstain_before_scoring(texts[i], nsp[i], alp[i], self.abstain)
            if r is not None:
                status[i], reason[i] = S.STATUS_ABSTAINED, r
            else:
                to_score.setdefault(texts[i].strip(), []).append(i)
        if to_score:
            probs, raw = self.scorer_to_probs(self._raw_scores(list(to_score)))
            idx, top, marg = top_two(probs)
            for p, rows in enumerate(to_score.values()):
                for i in rows:
                    out["scores"][i] = probs[p].tolist()
                    out["raw_scores"][i] = raw[p].tolist()
                    out["confidence"][i] = float(top[p])
                    out["margin"][i] = float(marg[p])
                    if top[p] < self.abstain.min_confidence:
                        status[i], reason[i] = S.STATUS_ABSTAINED, S.ABSTAIN_LOW_CONFIDENCE
                    else:
                        status[i] = S.STATUS_LABELED
                        out["label"][i] = self.labels[int(idx[p])]
                        out["label_index"][i] = int(idx[p])
        out["scorer"] = [self.scorer_name] * n
        out["template_hash"] = [self.template_hash] * n
        return columns(out)

    def scorer_to_probs(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label probabilities and per-label raw scores from the raw scores of every distinct
        hypothesis, without loading the model (the rule is the backend's; an ensemble's
        templates averaged)."""
        from labeler.models.base import ensemble_probs

        return ensemble_probs(self.scorer_cfg.backend, raw, self.template_index, self.scorer_cfg.temperature)

    def close(self) -> None:
        """Release the scorer's model; a vLLM engine must be shut down before the actor
        process exits (else the exit may abort). Ray Data calls ``__del__`` when it retires
        the actor gracefully."""
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            scorer.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful left to report
            pass
