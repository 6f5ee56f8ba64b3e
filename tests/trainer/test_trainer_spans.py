"""Utterances as the unit of training: a labels row with ``start_s`` / ``end_s`` is cut from
its source recording by seeking, to the very samples a decode of the whole file gives; a
table written before utterances had spans still trains; the train/val split keeps a
recording's utterances together; a crop never leaves its utterance."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures import load_sample, resample, write_audio
from trainer_testlib import EKMAN, SR, synth_clip, tiny_train_config, write_labels_table

SPAN_FIELDS = [pa.field("source_id", pa.string()), pa.field("segment_index", pa.int32()),
               pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64())]


def write_table(root: str, rows: list[dict], run_id: str = "run-spans", spans: bool = True, parts: int = 2) -> str:
    """A committed ekman run of ``rows``, with the span columns (``source_id``,
    ``segment_index``, ``start_s``, ``end_s``, after ``uri``) or, with ``spans=False``,
    without them, as the labeler wrote tables before utterances had spans. Works whether or
    not ``labeler.schema`` has the span columns yet."""
    rows = [{"source_id": r["utt_id"], **r} for r in rows]  # a whole file is its own source
    partition = write_labels_table(root, rows, "ekman", "1.0", run_id, parts=parts)
    by_utt = {r["utt_id"]: r for r in rows}
    for name in sorted(os.listdir(partition)):
        path = os.path.join(partition, name)
        table = pq.read_table(path)
        table = table.drop_columns([f.name for f in SPAN_FIELDS if f.name in table.column_names])
        if spans:
            at = table.column_names.index("uri") + 1
            for k, f in enumerate(SPAN_FIELDS):
                values = [by_utt[u].get(f.name) for u in table.column("utt_id").to_pylist()]
                table = table.add_column(at + k, f, pa.array(values, f.type))
        pq.write_table(table, path)
    return partition


def labeled(utt_id: str, uri: str, label: str, **span) -> dict:
    i = EKMAN.index(label)
    scores = [0.9 if j == i else 0.1 / (len(EKMAN) - 1) for j in range(len(EKMAN))]
    return {"utt_id": utt_id, "uri": uri, "status": "labeled", "label": label, "label_index": i,
            "confidence": 0.9, "scores": scores, **span}


def speech(seconds: float) -> np.ndarray:
    """Real speech (the labeler's packaged samples, 16 kHz), ``seconds`` long."""
    names = ["angry", "sad", "happy", "fear", "neutral", "surprise", "disgust"]
    x = np.concatenate([load_sample(n) for n in names])
    return np.tile(x, int(np.ceil(seconds * SR / len(x))))[: int(seconds * SR)]


class CountingFile:
    """A file object that counts the bytes read through it."""

    def __init__(self, f, counter: list):
        self.f, self.counter = f, counter

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.counter.append(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def no_whole_file_decode(monkeypatch):
    """Fails a test that would read a whole file (the fallback) instead of seeking."""
    import labeler.audio

    def refuse(*args, **kwargs):
        raise AssertionError("the whole file was read: seeking fell back to a decode from the start")

    monkeypatch.setattr(labeler.audio, "read_bytes", refuse)


@pytest.fixture
def bytes_read(monkeypatch):
    """The bytes read by seeking: a local file, which goes to FFmpeg by path, goes through a
    counting file object instead (as a remote file does)."""
    import trainer.features as F

    read: list[int] = []
    monkeypatch.setattr(F, "_open_input_file", lambda uri: CountingFile(open(uri, "rb"), read))
    return read


def featurize_rows(rows: list[dict], spec, crop: str = "start") -> dict:
    from trainer.features import featurize_batch

    batch = {"uri": np.array([r["uri"] for r in rows], dtype=object),
             "label_index": np.array([EKMAN.index(r.get("label", "neutral")) for r in rows])}
    if any("start_s" in r for r in rows):
        batch["start_s"] = np.array([r.get("start_s", np.nan) for r in rows], dtype=np.float64)
        batch["end_s"] = np.array([r.get("end_s", np.nan) for r in rows], dtype=np.float64)
    return featurize_batch(batch, spec=spec.to_dict(), num_classes=len(EKMAN), crop=crop)


# (suffix, source sample rate, channels): PCM; lossless FLAC; MP3 and Opus (lossy, with state
# carried from packet to packet, and resampled) all give bit-exact utterances.
FORMATS = [(".wav", 16_000, 1), (".wav", 44_100, 2), (".flac", 48_000, 2), (".mp3", 44_100, 1), (".mp3", 22_050, 2), (".ogg", 48_000, 1)]


@pytest.mark.parametrize("suffix,rate,channels", FORMATS, ids=[f"{s[1:]}-{r}-{c}ch" for s, r, c in FORMATS])
def test_an_utterance_is_cut_by_seeking_to_the_samples_of_a_whole_decode(tmp_path, no_whole_file_decode, suffix, rate, channels):
    """featurize_batch's features for (start_s, end_s) equal those of the same span cut by
    hand from the decode of the whole file: samples [round(start * 16000), round(end * 16000)),
    the same log-mel, the same crop."""
    from labeler.audio import decode
    from trainer.features import FeatureSpec, fit_frames, log_mel

    path = write_audio(tmp_path / f"recording{suffix}", resample(speech(30.0), SR, rate), rate, channels=channels)
    whole = decode(path.read_bytes()).waveform  # what the labeler decoded (read_bytes is refused from here on)
    spec = FeatureSpec(n_mels=40, max_seconds=4.0)
    duration = round(len(whole) / SR, 3)
    # mid-file utterances (one longer than max_seconds), one at the very start, one ending at the end
    spans = [(7.25, 9.731), (13.007, 18.5), (21.333, 22.01), (0.0, 1.2), (duration - 2.5, duration)]
    rows = [{"uri": str(path), "start_s": a, "end_s": b} for a, b in spans]
    out = featurize_rows(rows, spec)
    assert out["ok"].all()
    for k, (a, b) in enumerate(spans):
        cut = whole[int(round(a * SR)) : int(round(b * SR))]
        want, n = fit_frames(log_mel(cut, spec), spec.max_frames, "start", np.random.default_rng())
        assert out["n_frames"][k] == n == min(1 + len(cut) // spec.hop, spec.max_frames)
        assert np.array_equal(out["features"][k], want), (a, b, float(np.abs(out["features"][k] - want).max()))


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_seeking_reads_a_small_part_of_a_long_recording(tmp_path, no_whole_file_decode, bytes_read, suffix):
    """A 2-second utterance near the end of a 2-minute 44.1 kHz stereo recording: the file's
    header, FFmpeg's probing and the utterance are read, not the file. (An MP3 has no seek
    index: FFmpeg's exact seek reads its frame headers from the start, without decoding.)"""
    from trainer.features import load_span

    path = write_audio(tmp_path / f"long{suffix}", resample(speech(120.0), SR, 44_100), 44_100, channels=2)
    assert len(load_span(str(path), 110.0, 112.0)) == 2 * SR
    assert sum(bytes_read) < 0.1 * os.path.getsize(path)


def test_an_utterance_of_a_remote_file_is_cut_by_seeking_too(tmp_path, monkeypatch):
    """A URI of a pyarrow/fsspec filesystem (fsspec's in-memory one here) is opened as a
    seekable file: the same samples, and never the whole file read."""
    import fsspec

    import labeler.audio
    from labeler.audio import AudioError, decode
    from trainer.features import load_span

    data = write_audio(tmp_path / "recording.mp3", resample(speech(20.0), SR, 44_100), 44_100).read_bytes()
    with fsspec.filesystem("memory").open("/lanser-spans/recording.mp3", "wb") as f:
        f.write(data)
    whole = decode(data).waveform
    monkeypatch.setattr(labeler.audio, "read_bytes", lambda uri: pytest.fail("the whole file was read"))
    assert np.array_equal(load_span("memory://lanser-spans/recording.mp3", 12.5, 14.25), whole[200_000:228_000])
    with pytest.raises(AudioError, match="file not found: memory://lanser-spans/gone.mp3"):
        load_span("memory://lanser-spans/gone.mp3", 1.0, 2.0)
    fsspec.filesystem("memory").rm("/lanser-spans", recursive=True)


def test_where_seeking_cannot_be_exact_the_whole_file_is_decoded(tmp_path, monkeypatch):
    """The fallback (no timestamps, a gap, a seek that keeps landing late): the same samples,
    from a decode of the whole file."""
    import trainer.features as F
    from labeler.audio import decode

    path = write_audio(tmp_path / "recording.flac", speech(8.0), SR)

    def cannot(*args):
        raise F._SeekFailed("no timestamps")

    monkeypatch.setattr(F, "_seek_span", cannot)
    assert np.array_equal(F.load_span(str(path), 3.5, 5.0), decode(path.read_bytes()).waveform[56_000:80_000])


def test_aac_with_noise_substitution_is_the_one_inexact_case(tmp_path, no_whole_file_decode):
    """FFmpeg's AAC encoder uses perceptual noise substitution (PNS): the decoder fills those
    bands from a random generator whose state depends on everything decoded before, so a
    decode that starts at a seek point gives other noise there than a decode from the start.
    The utterance is at the same samples (timing exact) and differs only by that noise:
    well under 3 % of its RMS. (Without PNS, AAC is bit-exact too.)"""
    from labeler.audio import decode
    from trainer.features import load_span

    path = write_audio(tmp_path / "recording.m4a", resample(speech(20.0), SR, 44_100), 44_100)
    whole = decode(path.read_bytes()).waveform
    for a, b in [(6.5, 9.0), (12.25, 15.75)]:
        got, want = load_span(str(path), a, b), whole[int(round(a * SR)) : int(round(b * SR))]
        assert got.shape == want.shape
        assert np.sqrt(np.mean((got - want) ** 2)) < 0.03 * np.sqrt(np.mean(want**2))
        shifted = [np.sqrt(np.mean((got[d:] - want[: len(want) - d]) ** 2)) for d in (1, 2, 5)]
        assert min(shifted) > 5 * np.sqrt(np.mean((got - want) ** 2))  # aligned to the sample, not near it


def test_rows_without_a_span_read_the_whole_file(tmp_path):
    """Corpus rows and rows of tables written before utterances had spans (no columns, or
    null / NaN values) featurize their whole file, as before."""
    from labeler.audio import load
    from trainer.features import FeatureSpec, fit_frames, log_mel

    path = write_audio(tmp_path / "clip.wav", speech(2.0), SR)
    spec = FeatureSpec(n_mels=40, max_seconds=4.0)
    want, n = fit_frames(log_mel(load(str(path))[0].waveform, spec), spec.max_frames, "start", np.random.default_rng())
    for out in (featurize_rows([{"uri": str(path)}], spec), featurize_rows([{"uri": str(path), "start_s": np.nan}, {"uri": str(path), "start_s": 0.5}], spec)):
        assert out["ok"][0] and out["n_frames"][0] == n and np.array_equal(out["features"][0], want)
    # a start without an end: to the end of the file
    rest, n = fit_frames(log_mel(load(str(path))[0].waveform[8000:], spec), spec.max_frames, "start", np.random.default_rng())
    assert out["ok"][1] and out["n_frames"][1] == n and np.array_equal(out["features"][1], rest)
    # a span past the end of its file holds no samples: unreadable, never learned from
    gone = featurize_rows([{"uri": str(path), "start_s": 5.0, "end_s": 6.0}, {"uri": str(tmp_path / "deleted.wav"), "start_s": 0.0, "end_s": 1.0}], spec)
    assert not gone["ok"].any()


def test_a_crop_never_leaves_its_utterance(tmp_path):
    """Random crops of a long utterance are windows of the utterance's own features; a short
    utterance is zero-padded, never filled from the recording around it (loud noise here)."""
    from trainer.features import FeatureSpec, load_span, log_mel

    rng = np.random.default_rng(0)
    noise = lambda s: 0.8 * rng.uniform(-1, 1, int(s * SR)).astype(np.float32)  # noqa: E731
    long_utt, short_utt = synth_clip("joy", rng, seconds=3.0), synth_clip("sadness", rng, seconds=0.6)
    audio = np.concatenate([noise(1.0), long_utt, noise(0.5), short_utt, noise(1.0)])
    path = write_audio(tmp_path / "recording.flac", audio, SR)
    spans = {"long": (1.0, 4.0), "short": (4.5, 5.1)}
    spec = FeatureSpec(n_mels=32, max_seconds=1.0)
    m = spec.max_frames
    rows = [{"uri": str(path), "start_s": spans["long"][0], "end_s": spans["long"][1]}] * 24
    rows += [{"uri": str(path), "start_s": spans["short"][0], "end_s": spans["short"][1]}] * 4
    out = featurize_rows(rows, spec, crop="random")
    assert out["ok"].all()
    full = log_mel(load_span(str(path), *spans["long"]), spec)
    windows = {k: full[:, k : k + m] for k in range(full.shape[1] - m + 1)}
    offsets = set()
    for f in out["features"][:24]:
        hit = [k for k, w in windows.items() if np.array_equal(f, w)]
        assert hit, "a crop that is no window of its utterance's features"
        offsets.add(hit[0])
    assert len(offsets) > 5  # the crops are random, and all inside
    short = log_mel(load_span(str(path), *spans["short"]), spec)
    for f, n in zip(out["features"][24:], out["n_frames"][24:]):
        assert n == short.shape[1] < m
        assert np.array_equal(f[:, :n], short) and not f[:, n:].any()


def test_the_split_keeps_a_recordings_utterances_together(tmp_path, ray_local):
    """Train and val are split by source_id (utt_id where a table has none): every utterance
    of a recording is in one split, and the counts select_labels_run reports match."""
    from labeler.taxonomy import load_taxonomy
    from trainer.corpora import stable_unit
    from trainer.ingest import labels_rows, select_labels_run

    rows = []
    for s in range(40):
        source = f"rec{s:02d}"
        for k in range(4):
            rows.append(labeled(f"{source}@{1000 * k}-{1000 * k + 900}", f"/audio/{source}.wav", EKMAN[k],
                                segment_index=k, start_s=float(k), end_s=k + 0.9, source_id=source))
    rows += [labeled(f"clip{i}", f"/audio/clip{i}.wav", "joy", segment_index=0, start_s=0.0, end_s=1.5) for i in range(12)]
    rows.append({"utt_id": "rec00", "uri": "/audio/rec00.wav", "source_id": "rec00", "status": "error", "error": "decode: x"})
    root = str(tmp_path)
    write_table(root, rows, parts=3)
    # Split by utt_id, some recordings would straddle train and val: the test has teeth.
    assert any(len({stable_unit(r["utt_id"]) < 0.25 for r in rows if r.get("source_id") == f"rec{s:02d}"}) == 2 for s in range(40))

    selection = select_labels_run(root, load_taxonomy("ekman"), val_fraction=0.25)
    split_of = {}
    for split in ("train", "val"):
        got = labels_rows(selection, split=split, min_confidence=0.0, val_fraction=0.25).take_all()
        assert len(got) == selection.counts[split] > 0
        for r in got:
            assert split_of.setdefault(r["utt_id"], split) == split
            assert r["source_id"] == r["utt_id"].split("@")[0]
            assert (r["start_s"], r["end_s"]) == next((x["start_s"], x["end_s"]) for x in rows if x["utt_id"] == r["utt_id"])
    assert len(split_of) == 40 * 4 + 12
    by_source = defaultdict(set)
    for utt, split in split_of.items():
        by_source[utt.split("@")[0]].add(split)
    assert all(len(splits) == 1 for splits in by_source.values())
    assert {"train", "val"} == {next(iter(s)) for s in by_source.values()}


def test_a_table_without_span_columns_still_ingests(tmp_path, ray_local):
    """A table written before utterances had spans: source_id is the utt_id, spans are null
    (whole files), the split is by utt_id as before, and its rows featurize through Ray Data
    as whole files."""
    from labeler.audio import load
    from labeler.taxonomy import load_taxonomy
    from trainer.corpora import stable_unit
    from trainer.features import FeatureSpec, fit_frames, log_mel
    from trainer.ingest import _keep_labeled, featurize, labels_rows, select_labels_run

    rng = np.random.default_rng(3)
    rows = []
    for i in range(16):
        label = ["anger", "joy", "sadness", "neutral"][i % 4]
        rows.append(labeled(f"u{i:02d}", str(write_audio(tmp_path / f"u{i:02d}.wav", synth_clip(label, rng), SR)), label))
    root = str(tmp_path / "out")
    partition = write_table(root, rows, spans=False)
    old = pq.read_table(partition)
    assert not set(old.column_names) & {"source_id", "segment_index", "start_s", "end_s"}
    selection = select_labels_run(root, load_taxonomy("ekman"), val_fraction=0.25)
    assert selection.counts["val"] == sum(stable_unit(r["utt_id"]) < 0.25 for r in rows)  # as before spans
    assert selection.counts["train"] + selection.counts["val"] == 16
    for split in ("train", "val"):
        kept = _keep_labeled(old, min_confidence=0.0, val_fraction=0.25, split=split)
        assert kept.num_rows == selection.counts[split]
        assert kept.column("source_id").to_pylist() == kept.column("utt_id").to_pylist()
        assert kept.column("start_s").null_count == kept.column("end_s").null_count == kept.num_rows

    spec = FeatureSpec(n_mels=32, max_seconds=1.5)
    ds = labels_rows(selection, split="all", min_confidence=0.0, val_fraction=0.25)  # the Parquet read asks for no span column
    got = featurize(ds, spec=spec, num_classes=len(EKMAN), train=False, data_cpus=0.5, batch_size=8, base_dir=None, keep_ids=True).take_all()
    assert sorted(r["utt_id"] for r in got) == [r["utt_id"] for r in rows] and all(r["ok"] for r in got)
    first = next(r for r in got if r["utt_id"] == "u00")
    want, n = fit_frames(log_mel(load(rows[0]["uri"])[0].waveform, spec), spec.max_frames, "start", np.random.default_rng())
    # Ray runs the task with OMP_NUM_THREADS=1: BLAS may round the mel matmul differently in the last bit.
    assert first["n_frames"] == n and np.allclose(first["features"], want, rtol=0, atol=1e-5)


def test_pretraining_on_utterances_of_long_recordings(tmp_path, ray_local):
    """End to end on Ray Train: recordings of several utterances each (noise between them),
    one labels row per utterance with its span. Every utterance is read, none is unreadable,
    and the model learns."""
    from trainer.config import build_config
    from trainer.jobs import pretrain

    rng = np.random.default_rng(7)
    classes = ["anger", "joy", "sadness", "neutral"]
    rows = []
    for s in range(24):
        parts, t, spans = [], 0.0, []
        for k in range(4):
            cls = classes[(s + k) % 4]
            gap = (0.05 * rng.standard_normal(int(0.3 * SR))).astype(np.float32)
            clip = synth_clip(cls, rng)
            parts += [gap, clip]
            start = t + len(gap) / SR
            t = start + len(clip) / SR
            spans.append((round(start, 3), round(t, 3), cls))
        uri = str(write_audio(tmp_path / f"rec{s:02d}.flac", np.concatenate(parts), SR))
        for k, (a, b, cls) in enumerate(spans):
            rows.append(labeled(f"rec{s:02d}@{int(a * 1000)}-{int(b * 1000)}", uri, cls, source_id=f"rec{s:02d}", segment_index=k, start_s=a, end_s=b))
    root = str(tmp_path / "out")
    write_table(root, rows)
    cfg = build_config("pretrain", tiny_train_config(
        data={"kind": "labels", "root": root, "taxonomy": "ekman", "val_fraction": 0.25},
        train={"epochs": 4}, output_dir=str(tmp_path / "run"),
    ))
    report = pretrain(cfg)
    counts = report["data"]["counts"]
    assert counts["train"] + counts["val"] == len(rows) and counts["val"] % 4 == 0  # whole recordings
    history = report["history"]
    assert all(h["skipped_unreadable"] == 0 for h in history)
    assert all(h["train_rows"] == counts["train"] and h["val_rows"] == counts["val"] for h in history)
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert report["best_checkpoint"]["value"] > 1 / len(classes)
