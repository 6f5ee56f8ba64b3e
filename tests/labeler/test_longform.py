"""Issue 12, end to end: long recordings become utterance rows (real Ray, Whisper tiny.en,
real human speech from the Asterisk prompts), silence gives one abstained row, short clips
are unchanged, caches work per utterance, and a killed run resumes without losing or
duplicating an utterance of a half-processed recording."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

from bench.speech import asterisk_prompts, wer
from fixtures import REPO, load_sample, long_recording, write_audio

DEMO = str(REPO / "labeler" / "configs" / "demo.yaml")
#: Small batches and files, so a recording's utterances spread over several parts (and a
#: kill lands in the middle of one).
SMALL = ["--set", "out.rows_per_file=3", "--set", "decode.rows_per_block=1", "--set", "asr.batch_size=1",
         "--set", "scorer.batch_size=3", "--no-progress"]
N_RECORDINGS, PROMPTS_EACH = 3, 7


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "labeler", *args], capture_output=True, text=True, timeout=timeout)


def rows(root, where="true"):
    return duckdb.sql(
        f"SELECT source_id, segment_index, start_s, end_s, utt_id, text, status, label, abstain_reason, scores, run_id "
        f"FROM read_parquet('{root}/labels/**/*.parquet', hive_partitioning=true, hive_types_autocast=false) "
        f"WHERE {where} ORDER BY source_id, start_s").fetchall()


def manifest(root):
    return json.loads(sorted((Path(root) / "runs").glob("*.json"))[-1].read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three recordings of 7 spoken prompts each (about 40 s; pauses of 0.8-1.6 s), a
    recording of noise and silence, and two short clips."""
    d = tmp_path_factory.mktemp("longform")
    clips = d / "in"
    clips.mkdir()
    rng = random.Random(12)
    prompts = asterisk_prompts()
    rng.shuffle(prompts)
    truth = {}
    for k in range(N_RECORDINGS):
        chosen = prompts[k * PROMPTS_EACH:(k + 1) * PROMPTS_EACH]
        wav, spans = long_recording(chosen, [rng.uniform(0.8, 1.6) for _ in chosen])
        write_audio(clips / f"call{k}.flac", wav, 16_000)
        truth[f"call{k}"] = spans
    noise = np.random.default_rng(0).normal(0, 0.01, 16_000 * 25).astype(np.float32)
    write_audio(clips / "noise.flac", np.concatenate([noise, np.zeros(16_000 * 10, np.float32)]), 16_000)
    for name in ("happy", "sad"):
        write_audio(clips / f"{name}.flac", load_sample(name), 16_000)
    return clips, truth


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    clips, _ = corpus
    out = tmp_path_factory.mktemp("clean") / "out"
    proc = cli("label", "--config", DEMO, "--input", str(clips), "--output", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def check_utterances(table, truth):
    """Each recording's utterance rows against the prompts spoken in it: count within 20%,
    80% of the true boundaries found within 0.5 s, each utterance's text the words said in
    its span, and the whole recording reading as its prompts."""
    for source, spans in truth.items():
        mine = [r for r in table if r[0] == source]
        assert abs(len(mine) - len(spans)) <= 0.2 * len(spans), (source, [r[5] for r in mine])
        assert [r[1] for r in mine] == list(range(len(mine)))
        assert all(r[4] == f"{source}@{round(r[2] * 1000)}-{round(r[3] * 1000)}" for r in mine)
        true_b = [b for s, e, _ in spans for b in (s, e)]
        found = [b for r in mine for b in (r[2], r[3])]
        recall = np.mean([min(abs(b - f) for f in found) <= 0.5 for b in true_b])
        assert recall >= 0.8, (source, recall)
        for r in mine:  # each utterance says the words spoken in its span (short prompts: one
            # word such as "re-record" vs "rerecord" is already 17-33%, a wrong span is ~100%)
            said = " ".join(text for s, e, text in spans if min(e, r[3]) - max(s, r[2]) > 0.5)
            assert said and wer([said], [r[5]]) <= 40.0, (r[5], said)
            assert r[6] == "labeled" and r[7] is not None and len(r[9]) == 7
        # and the whole recording reads as its prompts
        assert wer([" ".join(t for _, _, t in spans)], [" ".join(r[5] for r in mine)]) <= 15.0


def test_recordings_become_utterances_with_their_spans(corpus, clean):
    _, truth = corpus
    out, stdout = clean
    table = rows(out)
    check_utterances(table, truth)
    m = manifest(out)
    assert m["counts"]["input_rows"] == N_RECORDINGS + 3 and m["counts"]["sources"] == N_RECORDINGS + 3
    assert m["counts"]["segmented_sources"] == N_RECORDINGS
    assert m["counts"]["utterances"] == len([r for r in table if r[1] is not None])
    assert sum(m["utterance_length_histogram"]["counts"]) == m["counts"]["utterances"]
    assert f"files: {N_RECORDINGS + 3} in -> {len(table)} rows out" in stdout
    report = json.loads((out / "reports" / f"{m['run_id']}.json").read_text())
    assert report["utterance_length_histogram"] == m["utterance_length_histogram"]
    assert (out / "reports" / f"{m['run_id']}.png").stat().st_size > 10_000


def test_noise_and_silence_give_one_abstained_row(clean):
    out, _ = clean
    noise = rows(out, "source_id = 'noise'")
    assert len(noise) == 1
    source, index, start, end, utt, text, status, label, reason = noise[0][:9]
    assert (utt, index, start, end, status, label, reason) == ("noise", None, 0.0, 35.0, "abstained", None, "no_speech")


def test_short_clips_unchanged_in_auto_mode(corpus, clean, tmp_path):
    """Clips under segment.min_source_s give exactly the rows of a run that never segments
    (with the same batching: a packed clip's transcript depends on its window's company)."""
    clips, _ = corpus
    out, _ = clean
    short = tmp_path / "short"
    short.mkdir()
    for name in ("happy", "sad"):
        shutil.copy(clips / f"{name}.flac", short)
    off = tmp_path / "off"
    proc = cli("label", "--config", DEMO, "--input", str(short), "--output", str(off), "--set", "segment.mode=off", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = rows(off)
    got = rows(out, "source_id IN ('happy', 'sad')")
    assert [r[:9] for r in got] == [r[:9] for r in want] and [r[9] for r in got] == [r[9] for r in want]
    assert all(r[1] == 0 and r[2] == 0.0 and r[4] == r[0] for r in got)


def test_caches_per_utterance(corpus, clean, tmp_path):
    """A second run reuses every utterance transcript; a segmentation setting invalidates the
    segmented recordings' transcripts and nothing else."""
    clips, truth = corpus
    out = tmp_path / "out"
    shutil.copytree(clean[0], out)
    proc = cli("label", "--config", DEMO, "--input", str(clips), "--output", str(out), "--taxonomy", "iemocap4", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    assert m["cache"]["transcribed"] == 0 and m["cache"]["transcripts_from_cache"] == N_RECORDINGS + 3
    # unchanged since the clean run (same URI, size, mtime): not even opened
    assert m["audio_files_read"] == 0 and m["counts"]["sources_skipped_by_metadata"] == N_RECORDINGS + 3
    first = rows(out, "taxonomy = 'ekman'")
    again = rows(out, "taxonomy = 'iemocap4'")
    assert [r[:7] for r in again] == [r[:7] for r in first]

    # A segmentation setting: VAD in 35-s windows. The same run streams the recordings (over
    # decode.stream_above_s: their rows carry speech regions, not audio, and ASR reads the
    # files again in windows of 20 s of speech), so memory stays bounded for any length.
    proc = cli("label", "--config", DEMO, "--input", str(clips), "--output", str(out), "--set", "segment.vad_window_s=35",
               "--set", "decode.stream_above_s=20", "--set", "decode.read_whole_max_mb=0.1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    # the recordings (and the noise file, segmented too) are transcribed again; the short clips are not
    assert m["cache"]["transcribed"] == N_RECORDINGS + 1 and m["cache"]["transcripts_from_cache"] == 2
    counters = m["stage_counters"]
    assert counters["decode"]["sources_streamed"] == N_RECORDINGS + 1 == counters["asr"]["sources_streamed"]
    assert counters["asr"]["streamed_windows"] >= 2 * N_RECORDINGS  # about 35 s of speech each: two windows
    # windowed VAD and streamed ASR find the utterances as well as whole-file VAD and packed ASR
    streamed = rows(out, f"run_id = '{m['run_id']}'")
    assert [(r[0], r[6], r[8]) for r in streamed if r[0] == "noise"] == [("noise", "abstained", "no_speech")]
    check_utterances(streamed, truth)


def test_relabel_keeps_the_utterances(clean, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean[0], out)
    proc = cli("relabel", "--config", DEMO, "--output", str(out), "--taxonomy", "iemocap4", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest(out)
    assert m["kind"] == "relabel" and m["audio_files_read"] == 0
    got = rows(out, "taxonomy = 'iemocap4'")
    want = rows(out, "taxonomy = 'ekman'")
    assert [r[:7] for r in got] == [r[:7] for r in want]
    assert m["counts"]["sources"] == N_RECORDINGS + 3 and m["counts"]["utterances"] == len([r for r in want if r[1] is not None])


def test_killed_run_resumes_to_the_clean_utterances(corpus, clean, tmp_path):
    clips, _ = corpus
    out = tmp_path / "out"
    args = ["label", "--config", DEMO, "--input", str(clips), "--output", str(out), *SMALL]
    proc = subprocess.Popen([sys.executable, "-m", "labeler", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if len(list((out / "_staging").glob("*/labels/part-*.parquet"))) >= 2:
            break
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (out / "labels").exists()
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    m = manifest(out)
    assert m["counts"]["resumed_rows"] > 0
    got, want = rows(out), rows(clean[0])
    assert [r[:9] for r in got] == [r[:9] for r in want]  # no utterance lost or duplicated
