"""Pure logic around the models: abstain rules, top-two, dedupe, the 1:1 row contract."""

import numpy as np
import pyarrow as pa
import pytest

from labeler import schema as S
from labeler.config import AbstainConfig, ScorerConfig
from labeler.models.scorers import Scorer
from labeler.stages.base import StageContractError, check_rows
from labeler.stages.entail import EntailStage, abstain_before_scoring, top_two
from labeler.taxonomy import parse_taxonomy


class CountingScorer(Scorer):
    """Stand-in for a model in a pure-logic test: scores by word overlap, counts calls."""

    backend, model_name = "fake", "overlap"

    def __init__(self):
        self.pairs_seen = []

    def score_pairs(self, premises, hypotheses, pairs):
        self.pairs_seen += [(premises[p], hypotheses[h]) for p, h in pairs]
        return np.array([float(sum(w in premises[p].lower() for w in hypotheses[h].lower().split())) for p, h in pairs], np.float32)


TAX = parse_taxonomy({"name": "t", "version": "1", "hypothesis_template": "{label}", "labels": ["happy", "sad", "angry"]})


def make_stage(min_confidence=0.0, score_cache=None):
    stage = EntailStage(ScorerConfig(backend="nli", model="fake"), AbstainConfig(min_confidence=min_confidence), TAX, score_cache)
    stage._scorer = CountingScorer()  # no model load in a pure-logic test
    return stage


def batch(texts, nsp=None, alp=None, errors=None):
    n = len(texts)
    return pa.table({
        "utt_id": [f"u{i}" for i in range(n)],
        "text": texts,
        "no_speech_prob": nsp or [0.01] * n,
        "avg_logprob": alp or [-0.2] * n,
        "error": errors or [None] * n,
    })


def test_abstain_rules():
    cfg = AbstainConfig()
    assert abstain_before_scoring("hello", None, None, cfg) == S.ABSTAIN_NO_SPEECH
    assert abstain_before_scoring("hello", 0.9, -1.5, cfg) == S.ABSTAIN_NO_SPEECH
    assert abstain_before_scoring("hello", 0.9, -0.1, cfg) is None  # confident text despite no_speech_prob
    assert abstain_before_scoring("  ", 0.1, -0.1, cfg) == S.ABSTAIN_EMPTY_TRANSCRIPT
    assert abstain_before_scoring("ok", 0.1, -0.1, AbstainConfig(min_chars=3)) == S.ABSTAIN_EMPTY_TRANSCRIPT


def test_top_two():
    idx, top, margin = top_two(np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]], np.float32))
    assert idx.tolist() == [1, 0]
    np.testing.assert_allclose(top, [0.7, 0.5])
    np.testing.assert_allclose(margin, [0.5, 0.0])


def test_entail_stage_outcomes_and_dedupe():
    stage = make_stage()
    out = stage(batch(
        ["I am so happy", "I am so happy", "sad sad day", "", "angry", "x"],
        nsp=[0.01, 0.01, 0.01, 0.01, 0.01, None],
        errors=[None, None, None, None, "decode: empty file (0 bytes)", None],
    ))
    rows = out.to_pylist()
    assert [r["status"] for r in rows] == ["labeled", "labeled", "labeled", "abstained", "error", "abstained"]
    assert [r["label"] for r in rows] == ["happy", "happy", "sad", None, None, None]
    assert [r["abstain_reason"] for r in rows] == [None, None, None, "empty_transcript", None, "no_speech"]
    assert {p for p, _ in stage.scorer.pairs_seen} == {"I am so happy", "sad sad day"}  # duplicate scored once
    assert len(stage.scorer.pairs_seen) == 6
    # the newly scored pairs leave once per transcript, for the score cache
    assert [len(r["new_pair_keys"] or []) for r in rows] == [3, 0, 3, 0, 0, 0]
    # a later batch with the same transcript is served from the actor's memo
    again = stage(batch(["I am so happy"])).to_pylist()[0]
    assert len(stage.scorer.pairs_seen) == 6 and again["scores"] == pytest.approx(rows[0]["scores"])
    assert rows[0]["scores"] == pytest.approx(rows[1]["scores"]) and sum(rows[0]["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["confidence"] == pytest.approx(max(rows[0]["scores"]))
    assert rows[4]["scores"] is None and rows[4]["error"].startswith("decode:")


def test_low_confidence_abstains_but_keeps_scores():
    out = make_stage(min_confidence=0.9)(batch(["happy"])).to_pylist()[0]
    assert out["status"] == "abstained" and out["abstain_reason"] == "low_confidence"
    assert out["label"] is None and len(out["scores"]) == 3


def test_score_cache_hits_skip_the_model():
    from labeler.cache import ScoreCache

    cache = ScoreCache.empty(ScorerConfig(backend="nli", model="fake").key_hash())
    keys = np.array(sorted(cache.pair_key("sad sad day", h) for h in ["happy", "sad"]), np.uint64)
    raw = np.array([5.0 if k == cache.pair_key("sad sad day", "sad") else 0.0 for k in keys], np.float32)
    stage = make_stage(score_cache=ScoreCache(keys, raw, cache.scorer_key))
    row = stage(batch(["sad sad day"])).to_pylist()[0]
    assert stage.scorer.pairs_seen == [("sad sad day", "angry")]  # only the uncached pair
    assert row["raw_scores"] == pytest.approx([0.0, 5.0, 0.0]) and row["label"] == "sad"
    assert row["n_pairs_cached"] == 2 and row["n_pairs_scored"] == 1


def test_row_contract():
    with pytest.raises(StageContractError, match="every row must leave exactly once"):
        check_rows("x", 3, pa.table({"a": [1, 2]}))


def test_schema_conform_reports_all_problems():
    t = pa.table({"utt_id": [None], "uri": ["u"]})
    with pytest.raises(ValueError, match="missing columns"):
        S.conform(t, S.LABELS_FILE_SCHEMA)
    with pytest.raises(ValueError, match="utt_id: 1 null"):
        S.conform(t, pa.schema([pa.field("utt_id", pa.string(), nullable=False), pa.field("uri", pa.string())]))
