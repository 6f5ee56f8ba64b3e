"""Pure logic around the models: abstain rules, top-two, dedupe, the stage contract."""

import numpy as np
import pyarrow as pa
import pytest

from labeler import schema as S
from labeler.collector import Collector
from labeler.config import AbstainConfig, LabelConfig, ScorerConfig
from labeler.models.base import Scorer
from labeler.stages.base import Stage, StageContext, StageContractError, columns, require_stages
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


def make_stage(min_confidence=0.0, score_cache=None, collector=None):
    cfg = LabelConfig(scorer=ScorerConfig(backend="nli", model="fake"), abstain=AbstainConfig(min_confidence=min_confidence))
    stage = EntailStage(cfg, StageContext(taxonomy=TAX, score_cache=score_cache, collector=collector))
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


def test_entail_stage_outcomes_and_dedupe(tmp_path):
    collector = Collector(str(tmp_path), "run", "a", rows_per_file=1000)
    stage = make_stage(collector=collector)
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
    # data rows carry data only; the newly scored pairs go to the collector, once each
    assert not any(c.startswith(("new_pair", "n_pairs", "t_")) for c in out.column_names)
    entries = pa.concat_tables(collector.buffers["scores"])
    assert entries.num_rows == 6 and sorted(set(entries.column("hypothesis").to_pylist())) == ["angry", "happy", "sad"]
    counters = collector.stages["score"]
    assert counters["n_pairs_scored"] == 6 and counters["rows_in"] == counters["rows_out"] == 6 and counters["busy_seconds"] > 0
    # a later batch with the same transcript is served from the actor's memo
    again = stage(batch(["I am so happy"])).to_pylist()[0]
    assert len(stage.scorer.pairs_seen) == 6 and again["scores"] == pytest.approx(rows[0]["scores"])
    assert collector.stages["score"]["n_pairs_memo"] == 3
    assert rows[0]["scores"] == pytest.approx(rows[1]["scores"]) and sum(rows[0]["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["confidence"] == pytest.approx(max(rows[0]["scores"]))
    assert rows[4]["scores"] is None and rows[4]["error"].startswith("decode:")


def test_low_confidence_abstains_but_keeps_scores():
    out = make_stage(min_confidence=0.9)(batch(["happy"])).to_pylist()[0]
    assert out["status"] == "abstained" and out["abstain_reason"] == "low_confidence"
    assert out["label"] is None and len(out["scores"]) == 3


def test_score_cache_hits_skip_the_model(tmp_path):
    from labeler.cache import ScoreCache

    cache = ScoreCache.empty(ScorerConfig(backend="nli", model="fake").key_hash())
    keys = np.array(sorted(cache.pair_key("sad sad day", h) for h in ["happy", "sad"]), np.uint64)
    raw = np.array([5.0 if k == cache.pair_key("sad sad day", "sad") else 0.0 for k in keys], np.float32)
    collector = Collector(str(tmp_path), "run", "a", rows_per_file=1000)
    stage = make_stage(score_cache=ScoreCache(keys, raw, cache.scorer_key), collector=collector)
    row = stage(batch(["sad sad day"])).to_pylist()[0]
    assert stage.scorer.pairs_seen == [("sad sad day", "angry")]  # only the uncached pair
    assert row["raw_scores"] == pytest.approx([0.0, 5.0, 0.0]) and row["label"] == "sad"
    assert collector.stages["score"]["n_pairs_cached"] == 2 and collector.stages["score"]["n_pairs_scored"] == 1
    # finish() writes the new pair as a staged score-cache part
    side = collector.finish()
    assert side["files"] == [("scores", "part-a-c00000.parquet", 1)]
    assert (tmp_path / "_staging" / "run" / "scores" / "part-a-c00000.parquet").exists()


class Splitter(Stage):
    """A stage that splits each text into words (1 -> N), or drops rows when told to."""

    name, reads, writes, expands = "split", ("text",), ("text",), True

    def __init__(self, lose_row=None):
        super().__init__(LabelConfig(), StageContext())
        self.lose_row = lose_row

    def process(self, batch):
        parents, words = [], []
        for i, text in enumerate(batch.column("text").to_pylist()):
            if i == self.lose_row:
                continue
            for w in text.split() or [""]:  # a row with no words still leaves one row
                parents.append(i)
                words.append(w)
        return columns({"text": words, "parent_row": parents})


def test_stage_contract_one_to_many_carries_every_other_column():
    out = Splitter()(pa.table({"utt_id": ["a", "b", "c"], "text": ["one two", "", "three"], "error": [None, None, "x"]}))
    assert out.column("utt_id").to_pylist() == ["a", "a", "b", "c"]
    assert out.column("text").to_pylist() == ["one", "two", "", "three"]
    assert out.column("error").to_pylist() == [None, None, None, "x"]
    with pytest.raises(StageContractError, match=r"input rows \[1\] left no output row"):
        Splitter(lose_row=1)(pa.table({"text": ["a", "b", "c"]}))


def test_stage_contract_declared_columns():
    class Lossy(Stage):
        name, reads, writes = "lossy", ("text",), ("text",)

        def process(self, batch):
            return batch.slice(0, 1)

    class Undeclared(Stage):
        name, reads, writes = "undeclared", ("text",), ("label",)

        def process(self, batch):
            # a stage sees only what it declared it reads
            assert batch.column_names == ["text"]
            return columns({"label": ["x"] * batch.num_rows, "status": ["labeled"] * batch.num_rows})

    stage_args = (LabelConfig(), StageContext())
    with pytest.raises(StageContractError, match="every row must leave exactly once"):
        Lossy(*stage_args)(pa.table({"text": ["a", "b"]}))
    with pytest.raises(StageContractError, match="lacks columns"):
        Lossy(*stage_args)(pa.table({"uri": ["a"]}))
    with pytest.raises(StageContractError, match="declared"):
        Undeclared(*stage_args)(pa.table({"text": ["a"], "error": [None]}))
    # the label and relabel pipelines find every column they read before anything runs
    from labeler.stages.asr import ASRStage
    from labeler.stages.decode import DecodeStage

    require_stages((DecodeStage, ASRStage, EntailStage), ["utt_id", "uri", "source_row", "error"])
    from labeler.pipeline import RELABEL_COLUMNS

    require_stages((EntailStage,), RELABEL_COLUMNS)
    with pytest.raises(StageContractError, match="asr: reads"):
        require_stages((ASRStage, EntailStage), ["utt_id", "uri", "error"])


def test_schema_conform_reports_all_problems():
    t = pa.table({"utt_id": [None], "uri": ["u"]})
    with pytest.raises(ValueError, match="missing columns"):
        S.conform(t, S.LABELS_FILE_SCHEMA)
    with pytest.raises(ValueError, match="utt_id: 1 null"):
        S.conform(t, pa.schema([pa.field("utt_id", pa.string(), nullable=False), pa.field("uri", pa.string())]))
