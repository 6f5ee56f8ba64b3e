"""Entailment stage (actor pool): score every taxonomy label for every transcript.

Input columns: ``utt_id``, ``text``, ``no_speech_prob``, ``avg_logprob``, ``error``.
Adds ``status``, ``label``, ``label_index``, ``confidence``, ``margin``, ``scores``,
``raw_scores``, ``abstain_reason``, ``scorer``, ``template_hash``, ``t_score``.

Rows with no speech or an empty transcript abstain instead of getting a made-up label.
Identical transcripts ("yeah", "okay") are scored once: within a batch, and across the
actor's batches through a memo of scored pairs. Pairs found in the score cache (earlier
runs, any taxonomy sharing the hypothesis) are not scored again; newly scored pairs leave
in the ``new_pair_*`` columns for the sink to add to the cache. The scorer model is loaded
on the first batch that needs it, so a fully cached relabel loads none.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.stages.base import check_rows, require_columns, resolve_ref, with_columns

INPUT_COLUMNS = ("utt_id", "text", "no_speech_prob", "avg_logprob", "error")


def abstain_before_scoring(text: Optional[str], no_speech_prob: Optional[float], avg_logprob: Optional[float], cfg) -> Optional[str]:
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


class EntailStage:
    name = "entail"

    def __init__(self, scorer_cfg, abstain_cfg, taxonomy, score_cache=None, memo_pairs: int = 1_000_000) -> None:
        from labeler.cache import ScoreCache

        self.scorer_cfg = scorer_cfg
        self._scorer = None
        self.scorer_name = f"{scorer_cfg.backend}:{scorer_cfg.model}"
        self.abstain = abstain_cfg
        self.labels = taxonomy.label_names
        self.hypotheses = taxonomy.hypotheses
        self.template_hash = taxonomy.template_hash
        cache = resolve_ref(score_cache)
        self.cache = cache if cache is not None else ScoreCache.empty(scorer_cfg.key_hash())
        self.memo: dict[int, float] = {}
        self.memo_pairs = memo_pairs

    @property
    def scorer(self):
        if self._scorer is None:
            from labeler.models.scorers import make_scorer

            self._scorer = make_scorer(self.scorer_cfg)
        return self._scorer

    def _raw_scores(self, premises: list[str]):
        """Full raw matrix for ``premises``: cache, then memo, then the model for the rest."""
        from labeler.cache import text_sha256

        H = len(self.hypotheses)
        keys = np.array([self.cache.pair_key(p, h) for p in premises for h in self.hypotheses], dtype=np.uint64)
        found, raw = self.cache.lookup(keys)
        n_cached = int(found.sum())
        todo = []
        for j in np.flatnonzero(~found):
            k = int(keys[j])
            if k in self.memo:
                raw[j] = self.memo[k]
                found[j] = True
            else:
                todo.append(j)
        n_memo = int(found.sum()) - n_cached
        new = {}
        if todo:
            pairs = [(int(j) // H, int(j) % H) for j in todo]
            scored = self.scorer.score_pairs(premises, self.hypotheses, pairs)
            for j, (p, h), value in zip(todo, pairs, scored):
                raw[j] = value
                new.setdefault(p, []).append((int(keys[j]), h, float(value)))
                if len(self.memo) < self.memo_pairs:
                    self.memo[int(keys[j])] = float(value)
        shas = [text_sha256(p) for p in premises]
        return raw.reshape(len(premises), H), new, shas, (n_cached, n_memo, len(todo))

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns(self.name, batch, INPUT_COLUMNS)
        t0 = time.perf_counter()
        n = batch.num_rows
        texts = batch.column("text").to_pylist()
        nsp = batch.column("no_speech_prob").to_pylist()
        alp = batch.column("avg_logprob").to_pylist()
        errors = batch.column("error").to_pylist()

        status = [S.STATUS_ERROR if e is not None else None for e in errors]
        reason: list[Optional[str]] = [None] * n
        to_score: dict[str, list[int]] = {}
        for i in range(n):
            if status[i] is not None:
                continue
            r = abstain_before_scoring(texts[i], nsp[i], alp[i], self.abstain)
            if r is not None:
                status[i], reason[i] = S.STATUS_ABSTAINED, r
            else:
                to_score.setdefault(texts[i].strip(), []).append(i)

        label = [None] * n
        label_index = [None] * n
        conf = [None] * n
        margin = [None] * n
        scores = [None] * n
        raw_scores = [None] * n
        text_sha = [None] * n
        new_keys, new_hyp, new_raw = [None] * n, [None] * n, [None] * n
        counts = (0, 0, 0)
        if to_score:
            premises = list(to_score)
            raw, new, shas, counts = self._raw_scores(premises)
            probs = self.scorer_to_probs(raw)
            idx, top, marg = top_two(probs)
            for p, rows in enumerate(to_score.values()):
                if p in new:  # the first row of a transcript carries its newly scored pairs
                    first = rows[0]
                    new_keys[first] = [k for k, _, _ in new[p]]
                    new_hyp[first] = [h for _, h, _ in new[p]]
                    new_raw[first] = [v for _, _, v in new[p]]
                for i in rows:
                    text_sha[i] = shas[p]
                    scores[i] = probs[p].tolist()
                    raw_scores[i] = raw[p].tolist()
                    conf[i] = float(top[p])
                    margin[i] = float(marg[p])
                    if top[p] < self.abstain.min_confidence:
                        status[i], reason[i] = S.STATUS_ABSTAINED, S.ABSTAIN_LOW_CONFIDENCE
                    else:
                        status[i] = S.STATUS_LABELED
                        label[i] = self.labels[int(idx[p])]
                        label_index[i] = int(idx[p])
        per_row = (time.perf_counter() - t0) / max(n, 1)
        out = with_columns(
            batch,
            {
                "status": pa.array(status, pa.string()),
                "label": pa.array(label, pa.string()),
                "label_index": pa.array(label_index, pa.int32()),
                "confidence": pa.array(conf, pa.float32()),
                "margin": pa.array(margin, pa.float32()),
                "scores": pa.array(scores, pa.list_(pa.float32())),
                "raw_scores": pa.array(raw_scores, pa.list_(pa.float32())),
                "abstain_reason": pa.array(reason, pa.string()),
                "scorer": pa.array([self.scorer_name] * n, pa.string()),
                "template_hash": pa.array([self.template_hash] * n, pa.string()),
                "text_sha256": pa.array(text_sha, pa.string()),
                "new_pair_keys": pa.array(new_keys, pa.list_(pa.uint64())),
                "new_pair_hyp": pa.array(new_hyp, pa.list_(pa.int32())),
                "new_pair_raw": pa.array(new_raw, pa.list_(pa.float32())),
                "n_pairs_cached": pa.array([counts[0]] + [0] * (n - 1), pa.int64()),
                "n_pairs_memo": pa.array([counts[1]] + [0] * (n - 1), pa.int64()),
                "n_pairs_scored": pa.array([counts[2]] + [0] * (n - 1), pa.int64()),
                "t_score": pa.array([per_row] * n, pa.float64()),
            },
        )
        return check_rows(self.name, n, out)

    def close(self) -> None:
        """Release the scorer's model; a vLLM engine must be shut down before the actor
        process exits (else the exit may abort). Ray Data calls ``__del__`` when it retires
        the actor gracefully."""
        scorer, self._scorer = self._scorer, None
        if scorer is not None and hasattr(scorer, "close"):
            scorer.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful left to report
            pass

    def scorer_to_probs(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities from raw scores without loading the model (the rule is the backend's)."""
        from labeler.models.scorers import probs_for_backend

        return probs_for_backend(self.scorer_cfg.backend, raw, self.scorer_cfg.temperature)
