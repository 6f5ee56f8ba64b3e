"""Issue 12, bounded memory for long recordings: audio decoded as a stream of blocks, VAD
over bounded windows, a large file hashed without being held, the speech regions cut again
from a stream in bounded groups, and the decode stage keeping a long recording's audio out
of its row (real PyAV, real Silero VAD; the end-to-end run is in test_longform.py)."""

import random
import threading
import time

import numpy as np
import pytest

from bench.speech import asterisk_prompts
from fixtures import load_sample, long_recording, write_audio
from labeler.audio import SAMPLE_RATE, AudioError, PcmStream, decode, prefetch, read_or_hash, sha256_hex, spans_of_stream
from labeler.config import LabelConfig, SegmentConfig
from labeler.segment import WindowedVAD, speech_regions


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """About 75 s of real speech (14 prompts, pauses of 0.6-2 s) as FLAC: the file, its waveform."""
    rng = random.Random(3)
    prompts = asterisk_prompts()
    rng.shuffle(prompts)
    wav, _ = long_recording(prompts[:14], [rng.uniform(0.6, 2.0) for _ in range(14)])
    path = write_audio(tmp_path_factory.mktemp("stream") / "talk.flac", wav, SAMPLE_RATE)
    return path, decode(path.read_bytes()).waveform


@pytest.mark.parametrize("suffix", [".flac", ".mp3"])
def test_the_stream_is_the_whole_decode(tmp_path, suffix):
    x = np.concatenate([load_sample("happy"), load_sample("sad"), load_sample("happy")])
    path = write_audio(tmp_path / f"x{suffix}", x, SAMPLE_RATE)
    whole = decode(path.read_bytes()).waveform
    for source in (str(path), path.read_bytes()):
        blocks = list(PcmStream(source, block_s=1.0))
        assert len(blocks) > 3 and all(b.dtype == np.float32 and b.size <= 2 * SAMPLE_RATE for b in blocks)
        assert np.array_equal(np.concatenate(blocks), whole)


def test_stream_errors(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        list(PcmStream(str(tmp_path / "missing.wav")))
    (tmp_path / "text.wav").write_bytes(b"not audio at all\n" * 50)
    with pytest.raises(AudioError, match="not a readable audio file|no audio stream|corrupt"):
        list(PcmStream(str(tmp_path / "text.wav")))


def test_a_large_file_is_hashed_without_being_held(recording):
    path, _ = recording
    data = path.read_bytes()
    sha, kept = read_or_hash(str(path), keep_max_bytes=len(data), block_bytes=4096)
    assert sha == sha256_hex(data) and kept == data
    sha, kept = read_or_hash(str(path), keep_max_bytes=len(data) - 1, block_bytes=4096)
    assert sha == sha256_hex(data) and kept is None


def test_spans_cut_from_a_stream_equal_the_whole_cut_in_bounded_groups():
    rng = np.random.default_rng(0)
    x = rng.normal(size=SAMPLE_RATE * 120).astype(np.float32)
    edges = np.sort(rng.uniform(0, 121, 40))  # the last span may run past the end
    spans = [(float(a), float(b)) for a, b in zip(edges[::2], edges[1::2])]
    for block_s in (0.7, 5.0, 200.0):
        blocks = (x[i:i + int(block_s * SAMPLE_RATE)] for i in range(0, x.size, int(block_s * SAMPLE_RATE)))
        groups = list(spans_of_stream(blocks, spans, group_s=10.0))
        got = [k for g in groups for k, _ in g]
        assert got == list(range(len(spans)))
        for g in groups:
            assert len(g) == 1 or sum(w.size for _, w in g) <= 10 * SAMPLE_RATE
            for k, w in g:
                s, e = spans[k]
                assert np.array_equal(w, x[int(round(s * SAMPLE_RATE)):int(round(e * SAMPLE_RATE))])


def test_prefetch_keeps_order_raises_and_stops():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise AudioError("gone")

    with pytest.raises(AudioError, match="gone"):
        list(prefetch(broken()))
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    it = prefetch(endless(), depth=1)
    assert next(it) == 0
    it.close()  # the consumer leaves: the producer thread ends, it does not run on
    time.sleep(0.3)
    n = len(made)
    time.sleep(0.3)
    assert len(made) == n <= 4
    assert not [t for t in threading.enumerate() if t.name == "lanser-prefetch"]


def test_windowed_vad_matches_whole_file_vad(recording):
    _, x = recording
    whole = speech_regions(x, SegmentConfig())
    one = WindowedVAD(SegmentConfig(vad_window_s=600))
    for i in range(0, x.size, SAMPLE_RATE * 7):
        one.feed(x[i:i + SAMPLE_RATE * 7])
    assert one.finish() == whole  # a recording within one window: exactly the whole-file regions

    cfg = SegmentConfig(vad_window_s=35)
    vad = WindowedVAD(cfg)
    most = 0
    for i in range(0, x.size, SAMPLE_RATE * 3):
        vad.feed(x[i:i + SAMPLE_RATE * 3])
        most = max(most, vad.held)
    regions = vad.finish()
    assert vad.offset > 0 and most <= (35 + 3) * SAMPLE_RATE  # several windows, never more than one held
    assert all(s < e <= s + cfg.max_region_s + 1e-6 for s, e in regions)
    assert all(a[1] <= b[0] for a, b in zip(regions, regions[1:]))
    # every whole-file region is found (within VAD's padding), none split by a window's edge
    for s, e in whole:
        assert any(abs(s - a) < 0.3 and abs(e - b) < 0.3 for a, b in regions), ((s, e), regions)
    assert len(regions) == len(whole)


def test_decode_keeps_a_long_recordings_audio_out_of_its_row(recording):
    from labeler.stages.base import StageContext
    from labeler.stages.decode import DecodeStage

    path, x = recording
    cfg = LabelConfig.model_validate({"decode": {"stream_above_s": 60}})
    stage = DecodeStage(cfg, StageContext())
    wave, duration, speech = stage.decode(str(path))
    assert wave is None and duration == pytest.approx(x.size / SAMPLE_RATE) and speech == [list(r) for r in speech_regions(x, cfg.segment)]
    cfg = LabelConfig.model_validate({"decode": {"stream_above_s": 600}})
    wave, _, speech2 = DecodeStage(cfg, StageContext()).decode(path.read_bytes())
    assert np.array_equal(wave, x) and speech2 == speech
    cfg = LabelConfig.model_validate({"decode": {"stream_above_s": 60, "max_duration_s": 30}})
    with pytest.raises(AudioError, match="max_duration_s"):
        DecodeStage(cfg, StageContext()).decode(str(path))
