"""Entailment stage (actor pool): score every taxonomy label for every transcript.

Input columns: ``utt_id``, ``text``, ``no_speech_prob``, ``avg_logprob``, ``error``.
Adds ``status``, ``label``, ``label_index``, ``confidence``, ``margin``, ``scores``,
``raw_scores``, ``abstain_reason``, ``scorer``, ``template_hash``, ``t_score``.

Rows with no speech or an empty transcript abstain instead of getting a made-up label.
Identical transcripts in a batch ("yeah", "okay") are scored once.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pyarrow as pa

from labeler import schema as S
from labeler.stages.base import check_rows, require_columns, with_columns

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

    def __init__(self, scorer_cfg, abstain_cfg, taxonomy) -> None:
        from labeler.models.scorers import make_scorer

        self.scorer = make_scorer(scorer_cfg)
        self.abstain = abstain_cfg
        self.labels = taxonomy.label_names
        self.hypotheses = taxonomy.hypotheses
        self.template_hash = taxonomy.template_hash

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
        if to_score:
            premises = list(to_score)
            result = self.scorer.score(premises, self.hypotheses)
            idx, top, marg = top_two(result.probs)
            for p, rows in enumerate(to_score.values()):
                for i in rows:
                    scores[i] = result.probs[p].tolist()
                    raw_scores[i] = result.raw[p].tolist()
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
                "scorer": pa.array([self.scorer.name] * n, pa.string()),
                "template_hash": pa.array([self.template_hash] * n, pa.string()),
                "t_score": pa.array([per_row] * n, pa.float64()),
            },
        )
        return check_rows(self.name, n, out)
