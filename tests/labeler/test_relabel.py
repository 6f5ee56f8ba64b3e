"""Issue 3: relabel from stored transcripts, caches, resumable and concurrent runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dataclasses import replace

import duckdb
import pyarrow as pa
import pytest

from bench.speech import asterisk_clips
from fixtures import REPO, SAMPLES
from labeler.config import load_config
from labeler.pipeline import RELABEL_COLUMNS, run_labeling
from labeler.runs import _select_utterances, find_committed, read_run_rows, stream_run_rows

DEMO = str(REPO / "labeler" / "configs" / "demo.yaml")


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "labeler", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def table(root, taxonomy=None, run_id=None):
    where = ["true"]
    if taxonomy:
        where.append(f"taxonomy = '{taxonomy}'")
    if run_id:
        where.append(f"run_id = '{run_id}'")
    return duckdb.sql(
        f"SELECT utt_id, text, label, status, run_id, taxonomy FROM read_parquet('{root}/labels/**/*.parquet', "
        f"hive_partitioning=true, hive_types_autocast=false) WHERE {' AND '.join(where)} ORDER BY utt_id"
    ).fetchall()


def manifest(root, run_id=None):
    runs = sorted(p for p in (Path(root) / "runs").glob("*.json"))
    path = Path(root) / "runs" / f"{run_id}.json" if run_id else runs[-1]
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def labeled_once(tmp_path_factory):
    """A corpus labeled once with ekman (fresh process, its own local Ray), for the module."""
    base = tmp_path_factory.mktemp("labeled")
    clips = base / "clips"
    shutil.copytree(SAMPLES, clips, ignore=shutil.ignore_patterns("*.md"))
    out = base / "out"
    proc = cli("label", "--config", DEMO, "--input", str(clips), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return clips, out


@pytest.fixture()
def labeled(labeled_once, tmp_path):
    """This test's own copy of the labeled corpus and its output root (tests change both).
    The copy's files have new paths, so a label run over them reads them again (their sha256
    then finds the transcripts); a relabel reads no audio at all."""
    clips, out = (shutil.copytree(p, tmp_path / p.name) for p in labeled_once)
    return Path(clips), Path(out)


def test_relabel_reads_no_audio_and_loads_no_asr(labeled, tmp_path, ray_local):
    clips, out = labeled
    shutil.rmtree(clips)  # any audio read would now fail
    # an ASR model that cannot load: relabel must not try
    proc = cli("relabel", "--config", DEMO, "--output", str(out), "--taxonomy", "iemocap4", "--no-progress",
               "--set", f"asr.model={tmp_path}/no-such-model")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    assert m["kind"] == "relabel" and m["audio_files_read"] == 0 and m["asr_model_loaded"] is False
    assert m["cache"]["transcripts_from_cache"] == 7 and m["cache"]["transcribed"] == 0
    assert m["counts"]["output_rows"] == 7 and m["counts"]["status"] == {"labeled": 7}
    rows = table(out, "iemocap4")
    assert len(rows) == 7 and all(r[3] == "labeled" for r in rows)
    assert dict((r[0], r[2]) for r in rows)["happy"] == "happy"
    ekman = {r[0]: r[1] for r in table(out, "ekman")}
    assert {r[0]: r[1] for r in rows} == ekman  # same transcripts, no new ASR
    assert "furious" in ekman["angry"].lower()
    report = json.loads((out / "reports" / f"{m['run_id']}.json").read_text())  # a relabel has its report too
    assert report["kind"] == "relabel" and list(report["label_distribution"]) == ["neutral", "happy", "sad", "angry"]
    assert sum(report["label_distribution"].values()) == 7 and (out / "reports" / f"{m['run_id']}.png").stat().st_size > 10_000
    assert "reports/" in proc.stdout
    # the relabel streamed its source run through Ray Data: the same rows the driver would read,
    # and a resumed relabel leaves out what it staged before
    src = find_committed(str(out), m["source_run"])
    want = read_run_rows(str(out), src, RELABEL_COLUMNS).to_pylist()
    streamed = stream_run_rows(str(out), src, RELABEL_COLUMNS, rows_per_block=3)

    def rows_of(inputs):
        return pa.concat_tables(ray_local.get(inputs.dataset().to_arrow_refs())).sort_by("utt_id").to_pylist()

    assert streamed.num_rows == len(want) == 7 and rows_of(streamed) == want
    staged = pa.array([want[0]["utt_id"], want[3]["utt_id"]])
    assert rows_of(replace(streamed, skip=staged)) == [r for i, r in enumerate(want) if i not in (0, 3)]


def test_rows_of_an_older_run_stream_as_whole_file_utterances():
    """A run written before the utterance columns existed: each file is one utterance."""
    old = pa.table({"utt_id": ["a", "b"], "duration_s": [2.0, None], "error": [None, "decode: bad"], "text": ["hi", None]})
    got = _select_utterances(old, ["utt_id", "source_id", "segment_index", "start_s", "end_s", "text"]).to_pylist()
    assert got == [{"utt_id": "a", "source_id": "a", "segment_index": 0, "start_s": 0.0, "end_s": 2.0, "text": "hi"},
                   {"utt_id": "b", "source_id": "b", "segment_index": None, "start_s": None, "end_s": None, "text": None}]


def test_added_label_scores_only_new_pairs(labeled, tmp_path):
    _, out = labeled
    tax = tmp_path / "ekman_plus.yaml"
    tax.write_text(
        "name: ekman_plus\nversion: '1'\nhypothesis_template: 'This person is feeling {label}.'\n"
        "labels: [anger, disgust, fear, joy, sadness, surprise, neutral, boredom]\n"
    )
    proc = cli("relabel", "--config", DEMO, "--output", str(out), "--taxonomy", str(tax), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    assert m["cache"]["n_pairs_scored"] == 7  # 7 transcripts x 1 new label
    assert m["cache"]["n_pairs_cached"] == 7 * 7
    assert len(table(out, "ekman_plus")) == 7


def test_second_label_run_transcribes_only_new_audio(labeled):
    clips, out = labeled
    shutil.copy(REPO / "labeler" / "samples" / "happy.flac", clips / "happy-copy.flac")  # same audio, new file
    extra = asterisk_clips(min_total_s=1, limit=1)[0]
    shutil.copy(extra.path, clips / "new-prompt.wav")
    proc = cli("label", "--config", DEMO, "--input", str(clips), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    assert m["counts"]["output_rows"] == 9
    assert m["cache"]["transcripts_from_cache"] == 8 and m["cache"]["transcribed"] == 1  # only the new prompt
    rows = {r[0]: r for r in table(out, run_id=m["run_id"])}
    assert rows["happy-copy"][1] == rows["happy"][1]
    words = set(extra.reference.lower().replace(".", "").replace(",", "").split())
    assert words & set(rows["new-prompt"][1].lower().replace(".", "").replace(",", "").split())


def test_cache_listing_and_dropping(labeled, tmp_path):
    _, out = labeled
    proc = cli("cache", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)["cache"]
    assert info["transcripts"][0]["audio"] == 7 and info["scores"][0]["pairs"] == 49
    h = info["transcripts"][0]["asr_config_hash"]
    proc = cli("cache", str(out), "--drop-asr-config", h, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.loads(proc.stdout)
    assert after["cache"]["transcripts"] == [] and len(after["dropped"]["transcript_runs"]) == 1
    assert len(table(out)) == 7  # labels are never touched


# ---- crash, resume, retries, concurrency ----

def _corpus(tmp_path, n):
    clips = tmp_path / "clips"
    clips.mkdir()
    for c in asterisk_clips(min_total_s=1e9, limit=n):
        shutil.copy(c.path, clips / f"{c.utt_id}.wav")
    return clips


def test_killed_run_resumes_to_the_same_table(tmp_path):
    clips = _corpus(tmp_path, 24)
    args = ["label", "--config", DEMO, "--input", str(clips), "--no-progress", "--set", "out.rows_per_file=2",
            "--set", "decode.rows_per_block=2", "--set", "asr.batch_size=2", "--set", "scorer.batch_size=2"]
    clean = tmp_path / "clean"
    assert cli(*args, "--output", str(clean)).returncode == 0

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "labeler", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staged = out / "_staging"
    deadline = time.time() + 300
    while time.time() < deadline:
        parts = list(staged.glob("*/labels/part-*.parquet"))
        if len(parts) >= 2:
            break
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (out / "runs").exists() or not list((out / "runs").glob("*.json")), "nothing may be committed"
    assert not (out / "labels").exists()

    again = cli(*args, "--output", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    m = manifest(out)
    # 24 files; the three prompts longer than 20 s are recordings cut into utterances
    assert 0 < m["counts"]["resumed_rows"] < 24 and m["counts"]["sources"] == 24 and m["counts"]["segmented_sources"] == 3
    got, want = table(out), table(clean)
    assert [r[0] for r in got] == [r[0] for r in want]  # no missing, no duplicate utt_id
    assert [(r[1], r[2], r[3]) for r in got] == [(r[1], r[2], r[3]) for r in want]
    assert len({r[4] for r in got}) == 1 and not list(staged.glob("*"))


def _asr_worker_pids(busy=True):
    """ASR actor processes (Ray titles them ``ray::MapWorker(MapBatches(ASRStage)).submit`` while working)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "MapWorker(MapBatches(ASRStage))" in cmd and (".submit" in cmd or not busy):
                pids.append(int(d.name))
    return pids


def test_asr_worker_killed_mid_run_is_retried(ray_local, tmp_path):
    clips = _corpus(tmp_path, 24)
    cfg = load_config(DEMO, {"input": str(clips), "output": str(tmp_path / "out"), "ray.progress": False,
                             "decode.rows_per_block": 2, "asr.batch_size": 2, "out.rows_per_file": 2})
    killed = []

    def killer():
        deadline = time.time() + 120
        busy_since = None
        while time.time() < deadline and not killed:
            pids = _asr_worker_pids(busy=True)
            if pids and busy_since is None:
                busy_since = time.time()
            if pids and time.time() - busy_since > 1.0:  # mid-run: some batches done, more to come
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    res = run_labeling(cfg)
    t.join()
    assert killed, "the ASR worker was never killed"
    assert res.manifest["counts"]["sources"] == 24 and res.manifest["counts"]["status"].get("error", 0) == 0
    rows = table(tmp_path / "out")
    assert len(rows) == res.manifest["counts"]["output_rows"] == len({r[0] for r in rows})  # no utterance twice
    assert len({r[0].split("@")[0] for r in rows}) == 24  # every file


def test_concurrent_runs_into_one_root(tmp_path):
    clips = tmp_path / "clips"
    shutil.copytree(SAMPLES, clips, ignore=shutil.ignore_patterns("*.md"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "labeler", "label", "--config", DEMO, "--input", str(clips), "--output", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ([], [], ["--taxonomy", "iemocap4"])]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert len(runs) == 3 and all(r["status"] == "committed" and r["counts"]["output_rows"] == 7 for r in runs)
    for r in runs:
        rows = table(out, run_id=r["run_id"])
        assert len(rows) == 7 and len({x[0] for x in rows}) == 7
    assert not list((out / "_staging").glob("*"))
