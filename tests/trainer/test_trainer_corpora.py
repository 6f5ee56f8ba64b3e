"""Corpus loaders on fixture trees that follow each corpus's real naming, and their splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer_testlib import build_ravdess, synth_clip, write_wav
from trainer.corpora import assign_splits, load_corpus, subsample
from trainer.errors import DatasetLayoutError

ALL_RAVDESS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def _labels(corpus):
    return corpus.table.column("label").to_pylist()


@pytest.fixture(scope="module")
def ravdess_small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rav") / "RAVDESS")
    return build_ravdess(root, actors=[1, 2, 3], emotions=ALL_RAVDESS, per_emotion=2, seconds=0.2)


# --------------------------------------------------------------------------- RAVDESS


def test_ravdess_maps_emotion_codes_onto_taxonomies(ravdess_small):
    iemo = load_corpus("ravdess", ravdess_small, "iemocap4")
    assert sorted(set(_labels(iemo))) == ["angry", "happy", "neutral", "sad"]
    assert iemo.table.num_rows == 3 * 4 * 2
    assert iemo.dropped == {"calm": 6, "disgust": 6, "fearful": 6, "surprised": 6}
    row = iemo.table.slice(0, 1).to_pylist()[0]
    name = os.path.basename(row["uri"])
    assert row["speaker"] == f"Actor_{name[-6:-4]}" and row["utt_id"] == name[:-4]
    code = name.split("-")[2]
    assert row["source_label"] == ALL_RAVDESS[int(code) - 1]

    ekman = load_corpus("ravdess", ravdess_small, "ekman")
    assert ekman.dropped == {"calm": 6}  # Ekman has no "calm"
    assert set(_labels(ekman)) == {"neutral", "joy", "sadness", "anger", "fear", "disgust", "surprise"}
    mapped = load_corpus("ravdess", ravdess_small, "iemocap4", label_map={"calm": "neutral"})
    assert _labels(mapped).count("neutral") == 12 and "calm" not in mapped.dropped
    names = ekman.label_names
    assert all(names[i] == lab for i, lab in zip(ekman.table.column("label_index").to_pylist(), _labels(ekman)))


def test_ravdess_rejects_trees_that_are_not_ravdess(tmp_path, ravdess_small):
    with pytest.raises(DatasetLayoutError, match="does not look like RAVDESS: expected Actor_01"):
        load_corpus("ravdess", str(tmp_path), "iemocap4")
    bad = tmp_path / "bad"
    build_ravdess(str(bad), actors=[1], emotions=["happy"], per_emotion=1, seconds=0.1)
    write_wav(str(bad / "Actor_01" / "03-01-05-01-01-01-02.wav"), np.zeros(160, np.float32))  # actor 02 in Actor_01
    write_wav(str(bad / "Actor_01" / "take3.wav"), np.zeros(160, np.float32))
    with pytest.raises(DatasetLayoutError) as err:
        load_corpus("ravdess", str(bad), "iemocap4")
    assert "2 file name(s)" in str(err.value) and "Actor_01/take3.wav" in str(err.value)
    with pytest.raises(DatasetLayoutError, match="not a directory"):
        load_corpus("ravdess", str(tmp_path / "missing"), "iemocap4")
    with pytest.raises(DatasetLayoutError, match="'calm' -> 'bored'"):
        load_corpus("ravdess", ravdess_small, "iemocap4", label_map={"calm": "bored"})


def test_ravdess_song_files_are_skipped_unless_asked(tmp_path):
    root = tmp_path / "R"
    build_ravdess(str(root), actors=[4], emotions=["sad"], per_emotion=1, seconds=0.1)
    write_wav(str(root / "Actor_04" / "03-02-04-01-01-01-04.wav"), np.zeros(1600, np.float32))
    assert load_corpus("ravdess", str(root), "iemocap4").skipped == {"song": 1}
    assert load_corpus("ravdess", str(root), "iemocap4", include_song=True).table.num_rows == 2


def test_loaded_rows_decode_to_log_mel_features(ravdess_small):
    from trainer.features import FeatureSpec, featurize_batch

    table = load_corpus("ravdess", ravdess_small, "iemocap4").table.slice(0, 4)
    batch = {"uri": np.array(table.column("uri").to_pylist(), dtype=object), "label_index": np.array(table.column("label_index").to_pylist())}
    out = featurize_batch(batch, spec=FeatureSpec(n_mels=24, max_seconds=0.5).to_dict(), num_classes=4)
    assert out["ok"].all()
    assert out["features"].shape == (4, 24, FeatureSpec(max_seconds=0.5).max_frames)
    assert (out["n_frames"] == 1 + 3200 // 160).all()  # 0.2 s clips, 10 ms hop
    assert np.abs(out["features"][:, :, : out["n_frames"][0]]).sum() > 0
    np.testing.assert_array_equal(out["target"].argmax(1), batch["label_index"])


def test_unreadable_audio_becomes_a_flagged_row_not_a_crash(tmp_path):
    from trainer.features import FeatureSpec, featurize_batch

    good = write_wav(str(tmp_path / "good.wav"), synth_clip("sad", np.random.default_rng(0), 0.3))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....nope")
    batch = {"uri": np.array([good, str(junk), str(tmp_path / "gone.wav")], dtype=object), "label_index": np.array([2, 1, 0])}
    out = featurize_batch(batch, spec=FeatureSpec(n_mels=16, max_seconds=0.5).to_dict(), num_classes=4)
    assert out["ok"].tolist() == [True, False, False]
    assert not out["features"][1:].any() and out["n_frames"][1:].tolist() == [0, 0]


# --------------------------------------------------------------------------- CREMA-D


def _cremad(root, speakers=(1001, 1002, 1003, 1004), emotions=("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")):
    rng = np.random.default_rng(0)
    for spk in speakers:
        for emo, sentence, level in zip(emotions, ["DFA", "IEO", "TIE", "IOM", "IWW", "TAI"], ["XX", "HI", "LO", "MD", "XX", "XX"]):
            write_wav(str(root / "AudioWAV" / f"{spk}_{sentence}_{emo}_{level}.wav"), synth_clip("neutral", rng, 0.1))
    return str(root)


def test_cremad_parses_speaker_sentence_emotion_level(tmp_path):
    corpus = load_corpus("crema-d", _cremad(tmp_path), "iemocap4")
    assert corpus.table.num_rows == 16 and corpus.dropped == {"DIS": 4, "FEA": 4}
    assert sorted(set(corpus.table.column("speaker").to_pylist())) == ["1001", "1002", "1003", "1004"]
    assert dict(zip(corpus.table.column("source_label").to_pylist(), _labels(corpus)))["HAP"] == "happy"
    assert load_corpus("crema-d", str(tmp_path / "AudioWAV"), "ekman").table.num_rows == 24  # the AudioWAV folder itself works too


def test_cremad_rejects_malformed_names(tmp_path):
    root = _cremad(tmp_path, speakers=(1001,))
    write_wav(str(tmp_path / "AudioWAV" / "1001_DFA_XYZ_XX.wav"), np.zeros(160, np.float32))
    with pytest.raises(DatasetLayoutError, match=r"CREMA-D: 1 file name\(s\).*1001_DFA_XYZ_XX.wav"):
        load_corpus("crema-d", root, "iemocap4")
    with pytest.raises(DatasetLayoutError, match="does not look like CREMA-D"):
        load_corpus("crema-d", str(tmp_path / "AudioWAV" / ".."/ ".." ), "iemocap4")


# --------------------------------------------------------------------------- IEMOCAP

_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _iemocap(root, sessions=(1, 2), missing=None, bad_line=None):
    rng = np.random.default_rng(0)
    classes = ["neu", "exc", "hap", "fru", "xxx", "ang", "sad"]
    for s in sessions:
        for gender in "FM":
            dialog = f"Ses0{s}{gender}_impro01"
            lines = [_HEADER]
            for k, emo in enumerate(classes):
                utt = f"{dialog}_{'FM'[k % 2]}{k:03d}"
                lines.append(f"[{k * 3 + 0.5:.4f} - {k * 3 + 2.25:.4f}]\t{utt}\t{emo}\t[2.5000, 3.0000, 2.5000]\n")
                lines.append(f"C-E1:\tNeutral;\t()\nA-E2:\tval 3; act 2; dom  2;\t()\n\n")
                if utt != missing:
                    write_wav(str(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav"), synth_clip("neutral", rng, 0.1))
            if bad_line and s == sessions[0] and gender == "F":
                lines.append(bad_line)
            eval_dir = root / f"Session{s}" / "dialog" / "EmoEvaluation"
            eval_dir.mkdir(parents=True, exist_ok=True)
            (eval_dir / f"{dialog}.txt").write_text("".join(lines))
            (eval_dir / "Categorical").mkdir(exist_ok=True)  # the real release has sub-folders; they are not label files
    return str(root)


def test_iemocap_reads_emoevaluation_and_merges_excitement(tmp_path):
    corpus = load_corpus("iemocap", _iemocap(tmp_path, missing="Ses02M_impro01_F002"), "iemocap4")
    labels = dict(zip(corpus.table.column("utt_id").to_pylist(), _labels(corpus)))
    assert labels["Ses01F_impro01_M001"] == "happy"  # exc -> happy (the standard 4-class setup)
    assert labels["Ses01F_impro01_F002"] == "happy"
    assert corpus.dropped == {"fru": 4, "xxx": 4}
    assert corpus.skipped == {"missing_audio": 1}
    assert corpus.table.num_rows == 2 * 2 * 5 - 1
    rows = {r["utt_id"]: r for r in corpus.table.to_pylist()}
    assert rows["Ses01F_impro01_M001"]["speaker"] == "Ses01M" and rows["Ses01F_impro01_M001"]["group"] == "Session1"
    assert rows["Ses02M_impro01_F000"]["uri"].endswith("Session2/sentences/wav/Ses02M_impro01/Ses02M_impro01_F000.wav")


def test_iemocap_rejects_unknown_classes_and_missing_label_files(tmp_path):
    root = _iemocap(tmp_path / "a", sessions=(1,), bad_line="[1.0000 - 2.0000]\tSes01F_impro01_F099\tzzz\t[2.5, 2.5, 2.5]\n")
    with pytest.raises(DatasetLayoutError, match=r"1 EmoEvaluation line.*F099"):
        load_corpus("iemocap", root, "iemocap4")
    (tmp_path / "b" / "Session1" / "sentences" / "wav").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="Session1 needs dialog/EmoEvaluation"):
        load_corpus("iemocap", str(tmp_path / "b"), "iemocap4")
    with pytest.raises(DatasetLayoutError, match="does not look like IEMOCAP"):
        load_corpus("iemocap", str(tmp_path / "b" / "Session1"), "iemocap4")


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_loader_reads_every_format(tmp_path, fmt):
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, spk) in enumerate([("joy", "a"), ("anger", "a"), ("bored", "b"), ("neutral", "b"), ("joy", "c")]):
        write_wav(str(tmp_path / "clips" / f"{i}.wav"), synth_clip("neutral", rng, 0.1))
        rows.append({"uri": f"clips/{i}.wav", "label": label, "speaker": spk, "utt_id": f"u{i}"})
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("uri,label,speaker,utt_id\n" + "".join(f"{r['uri']},{r['label']},{r['speaker']},{r['utt_id']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    corpus = load_corpus("manifest", str(path), "ekman")
    assert corpus.table.num_rows == 4 and corpus.dropped == {"bored": 1}
    assert all(os.path.isfile(u) for u in corpus.table.column("uri").to_pylist())  # relative to the manifest
    assert corpus.table.column("speaker").to_pylist() == ["a", "a", "b", "c"]
    with_map = load_corpus("manifest", str(path), "ekman", label_map={"bored": "neutral"})
    assert with_map.table.num_rows == 5


def test_manifest_errors_name_what_is_missing(tmp_path):
    (tmp_path / "m.csv").write_text("path,emotion\na.wav,joy\n")
    with pytest.raises(DatasetLayoutError, match=r"missing column\(s\) \['uri', 'label'\]"):
        load_corpus("manifest", str(tmp_path / "m.csv"), "ekman")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="unknown format"):
        load_corpus("manifest", str(tmp_path / "m.txt"), "ekman")


# --------------------------------------------------------------------------- splits


def test_splits_never_share_a_speaker(ravdess_small, tmp_path):
    table = load_corpus("ravdess", ravdess_small, "ekman").table
    for seed in range(5):
        split = assign_splits(table, test_fraction=0.34, val_fraction=0.5, seed=seed)
        by_group = {}
        for g, s in zip(split.column("group").to_pylist(), split.column("split").to_pylist()):
            by_group.setdefault(g, set()).add(s)
        assert all(len(s) == 1 for s in by_group.values())
        assert sorted(s for (s,) in by_group.values()) == ["test", "train", "val"]
    fixed = assign_splits(table, test_groups=["Actor_03"], val_groups=["Actor_02"])
    assert {g for g, s in zip(fixed.column("group").to_pylist(), fixed.column("split").to_pylist()) if s == "test"} == {"Actor_03"}
    with pytest.raises(DatasetLayoutError, match=r"test_groups: \['Actor_09'\] not found"):
        assign_splits(table, test_groups=["Actor_09"])


def test_subsample_is_stratified_and_nested(ravdess_small):
    table = load_corpus("ravdess", ravdess_small, "ekman").table
    per_class = {i: table.column("label_index").to_pylist().count(i) for i in set(table.column("label_index").to_pylist())}
    small, large = subsample(table, 0.2, seed=1), subsample(table, 0.5, seed=1)
    for frac, sub in ((0.2, small), (0.5, large)):
        counts = {i: sub.column("label_index").to_pylist().count(i) for i in per_class}
        assert counts == {i: max(1, round(n * frac)) for i, n in per_class.items()}
    assert set(small.column("utt_id").to_pylist()) <= set(large.column("utt_id").to_pylist())
    assert subsample(table, 1.0) is table
