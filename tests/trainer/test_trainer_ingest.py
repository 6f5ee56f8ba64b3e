"""Which run of the labels table a job trains on: only committed runs (the labeler's
manifests), the newest by default, and clear errors for everything else."""

from __future__ import annotations

import json
import os

import pytest

from trainer_testlib import write_labels_table
from trainer.errors import DataError
from trainer.ingest import select_labels_run


def _rows(n, label_index, names):
    return [{"utt_id": f"u{i}", "source_id": f"u{i}", "uri": f"/nowhere/u{i}.wav", "status": "labeled", "label": names[label_index],
             "label_index": label_index, "confidence": 0.9, "scores": [0.9 if j == label_index else 0.1 / (len(names) - 1) for j in range(len(names))]}
            for i in range(n)]


def test_labels_run_selection_prefers_committed_runs(tmp_path):
    from labeler.taxonomy import load_taxonomy

    tax = load_taxonomy("iemocap4")
    names = tax.label_names
    root = str(tmp_path)
    write_labels_table(root, _rows(40, 1, names) + [{"utt_id": "x", "source_id": "x", "uri": "/x.wav", "status": "abstained"}], "iemocap4", "1.0", "run-old", commit=True)
    staging = write_labels_table(root, _rows(30, 2, names), "iemocap4", "1.0", "run-new", commit=False)
    os.utime(staging, None)
    chosen = select_labels_run(root, tax, val_fraction=0.25)
    # run-new's partition is newer but has no committed manifest: it is no candidate at all
    assert chosen.run_id == "run-old" and chosen.run_kind == "label" and chosen.other_runs == []
    counts = chosen.counts
    assert (counts["rows"], counts["labeled"], counts["abstained"]) == (41, 40, 1)
    assert counts["train"] + counts["val"] == 40 and 0 < counts["val"] < 20
    assert counts["train_per_label"] == {"happy": counts["train"]}
    with pytest.raises(DataError, match=r"run_id 'run-new' of iemocap4 1.0 is not a committed run: .*no manifest runs/run-new.json.*not training data"):
        select_labels_run(root, tax, run_id="run-new")
    with pytest.raises(DataError, match=r"no labels for taxonomy 'ekman'.*taxonomies there: \['iemocap4'\]"):
        select_labels_run(root, load_taxonomy("ekman"))
    with pytest.raises(DataError, match=r"no taxonomy_version=2.0 partition \(versions there: \['1.0'\]\)"):
        select_labels_run(root, tax, taxonomy_version="2.0")
    with pytest.raises(DataError, match="leaves 0 training"):
        select_labels_run(root, tax, min_confidence=0.95)


def test_the_newest_committed_run_of_the_taxonomy_version_is_chosen(tmp_path):
    """Run ids sort by time; label and relabel runs both count; an explicit run_id must be a
    committed run of that taxonomy version."""
    from labeler.taxonomy import load_taxonomy

    iemocap, ekman = load_taxonomy("iemocap4"), load_taxonomy("ekman")
    root = str(tmp_path)
    first, second, other, running = "20240101T000000Z-aaaa", "20240102T000000Z-bbbb", "20240103T000000Z-cccc", "20240104T000000Z-dddd"
    write_labels_table(root, _rows(20, 0, iemocap.label_names), "iemocap4", "1.0", first)
    write_labels_table(root, _rows(24, 3, iemocap.label_names), "iemocap4", "1.0", second, kind="relabel")
    write_labels_table(root, _rows(20, 0, ekman.label_names), "ekman", "1.0", other)  # newest committed, another taxonomy
    write_labels_table(root, _rows(20, 2, iemocap.label_names), "iemocap4", "1.0", running, commit=False)
    (tmp_path / "runs" / f"{running}.json").write_text(json.dumps({"run_id": running, "kind": "label", "status": "running"}))

    chosen = select_labels_run(root, iemocap, val_fraction=0.25)
    assert (chosen.run_id, chosen.run_kind, chosen.other_runs) == (second, "relabel", [first])
    assert chosen.counts["rows"] == 24 and chosen.summary()["committed_at"]
    assert select_labels_run("file://" + root, iemocap, val_fraction=0.25).counts == chosen.counts  # a URI root too
    assert select_labels_run(root, ekman, val_fraction=0.25).run_id == other
    older = select_labels_run(root, iemocap, run_id=first, val_fraction=0.25)
    assert older.run_id == first and older.counts["rows"] == 20 and older.other_runs == [second]

    with pytest.raises(DataError, match=rf"run_id '{running}' of iemocap4 1.0 is not a committed run: .*manifest says status 'running'"):
        select_labels_run(root, iemocap, run_id=running)
    with pytest.raises(DataError, match=rf"run_id '{other}' labeled taxonomy ekman 1.0, not iemocap4 1.0"):
        select_labels_run(root, iemocap, run_id=other)
    with pytest.raises(DataError, match=rf"run_id 'nope' not found for iemocap4 1.0 \(committed runs: \['{first}', '{second}'\]\)"):
        select_labels_run(root, iemocap, run_id="nope")


def test_a_run_labeled_with_other_label_names_is_refused(tmp_path):
    """Same taxonomy name and version, different labels: the stored indices mean other classes."""
    from labeler.taxonomy import load_taxonomy

    tax = load_taxonomy("iemocap4")
    write_labels_table(str(tmp_path), _rows(20, 0, tax.label_names), "iemocap4", "1.0", "run-a")
    path = tmp_path / "runs" / "run-a.json"
    manifest = json.loads(path.read_text())
    manifest["taxonomy"]["labels"] = list(reversed(tax.label_names))
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="label indices would not match"):
        select_labels_run(str(tmp_path), tax)
