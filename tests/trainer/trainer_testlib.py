"""Test helpers for the trainer: synthetic emotional "speech" whose class is audible, fixture
trees built from it, and a tiny training config.

Each class has its own pitch contour and timbre (a harmonic tone with a rising, falling,
flat or trembling fundamental, plus noise of its own colour), with random speaker-like
variation in pitch, duration, level and noise, so a model must learn the contour and
spectral shape rather than memorise files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timezone

import numpy as np

SR = 16_000


def synth_clip(kind: str, rng: np.random.Generator, seconds: float | None = None) -> np.ndarray:
    seconds = seconds or float(rng.uniform(0.8, 1.4))
    n = int(seconds * SR)
    t = np.arange(n) / SR
    ramp = t / seconds
    noise_level, tremolo = 0.01, 0.0
    if kind in ("neutral", "calm"):
        f0 = rng.uniform(110, 150) * (1 + 0.01 * np.sin(2 * np.pi * 3 * t))
        harmonics, tilt, amp = 5, 1.0, 0.3
    elif kind in ("joy", "happy"):
        f0 = rng.uniform(190, 230) * (1 + 0.7 * ramp)
        harmonics, tilt, amp = 8, 0.7, 0.35
    elif kind in ("sadness", "sad"):
        f0 = rng.uniform(170, 200) * (1 - 0.45 * ramp)
        harmonics, tilt, amp = 3, 2.0, 0.15
    elif kind in ("anger", "angry"):
        f0 = np.full(n, rng.uniform(220, 280))
        harmonics, tilt, amp, noise_level, tremolo = 10, 0.5, 0.5, 0.15, rng.uniform(8, 12)
    elif kind in ("fear", "fearful"):
        f0 = rng.uniform(300, 350) * (1 + 0.05 * np.sin(2 * np.pi * 7 * t))
        harmonics, tilt, amp = 4, 1.2, 0.2
    else:  # disgust, surprise and anything else: a low buzzy tone
        f0 = np.full(n, rng.uniform(90, 110))
        harmonics, tilt, amp, noise_level = 12, 0.3, 0.3, 0.05
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wave = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**tilt for k in range(1, harmonics + 1))
    wave = wave / np.max(np.abs(wave))
    if tremolo:
        wave *= 0.6 + 0.4 * np.sin(2 * np.pi * tremolo * t)
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)  # 50 ms fades
    out = amp * rng.uniform(0.6, 1.4) * wave * envelope + noise_level * rng.standard_normal(n)
    return np.clip(out, -1, 1).astype(np.float32)


def write_wav(path: str, audio: np.ndarray) -> str:
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, SR, subtype="PCM_16")
    return path


# --------------------------------------------------------------------------- weak labels table


def write_labels_table(
    root: str, rows: list[dict], taxonomy: str, version: str, run_id: str, parts: int = 2, commit: bool = True, kind: str = "label"
) -> str:
    """Write rows (utt_id, uri, status, label, label_index, confidence, scores, error...) as
    one run of the labeler's Hive-partitioned labels table, through labeler.schema.conform,
    at labeler.schema.labels_partition. With ``commit`` the run's manifest follows, as the
    labeler's commit writes it last: ``runs/<run_id>.json`` with ``status: committed``, the
    run's kind, taxonomy, tables and counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.io import redact
    from labeler.schema import LABELS_FILE_SCHEMA, conform, labels_partition, manifest_path
    from labeler.taxonomy import load_taxonomy

    now = datetime.now(timezone.utc)
    full = []
    for r in rows:
        scores = r.get("scores")
        top2 = sorted(scores, reverse=True)[:2] if scores else None
        given = {
            "text": "synthetic", "language": "en", "margin": (top2[0] - top2[1]) if top2 else None,
            "raw_scores": scores, "asr_model": "synthetic", "asr_config_hash": "0", "scorer": "synthetic",
            "template_hash": "0", "created_at": now, "source_id": r.get("utt_id"), **r,
        }
        # Every column of the contract, whatever it holds today; the ones a row does not give are null.
        full.append({f.name: given.get(f.name) for f in LABELS_FILE_SCHEMA})
    partition = labels_partition(root, taxonomy, version, run_id)
    os.makedirs(partition, exist_ok=True)
    step = -(-len(full) // parts)
    for i in range(parts):
        chunk = full[i * step : (i + 1) * step]
        if chunk:
            table = conform(pa.Table.from_pylist(chunk), LABELS_FILE_SCHEMA)
            pq.write_table(table, os.path.join(partition, f"part-{i:05d}.parquet"))
    if commit:
        tax = load_taxonomy(taxonomy).to_dict()
        os.makedirs(os.path.join(root, "runs"), exist_ok=True)
        manifest = {
            "run_id": run_id,
            "kind": kind,
            "taxonomy": {**tax, "version": version},
            "counts": {"output_rows": len(full), "status": dict(Counter(r["status"] for r in full))},
            "status": "committed",
            "committed_at": now.isoformat(),
            "tables": {"labels": redact(partition)},
        }
        with open(manifest_path(root, run_id), "w", encoding="utf-8") as f:
            json.dump(manifest, f)
    return partition


def build_weak_corpus(root: str, classes: list[str], label_names: list[str], per_class: int, seed: int = 0) -> dict:
    """Audio under ``root/audio`` and a committed labels table under ``root`` with: clean
    weak labels; mislabeled rows with low confidence; abstained rows; error rows; and one
    labeled row whose file has since disappeared. Returns what was written, by kind."""
    rng = np.random.default_rng(seed)
    audio_dir = os.path.join(root, "audio")
    rows, expect = [], {"labeled_ok": 0, "low_confidence": 0, "abstained": 0, "error": 0, "missing_file": 0}

    def scores_for(index: int, confidence: float) -> list[float]:
        # The remainder is spread almost evenly, so ``confidence`` stays the top score.
        rest = rng.dirichlet(np.full(len(label_names) - 1, 50.0)) * (1 - confidence)
        return [float(x) for x in np.insert(rest, index, confidence)]

    n = 0
    for cls in classes:
        true = label_names.index(cls)
        for _ in range(per_class):
            uri = write_wav(os.path.join(audio_dir, f"utt{n:04d}.wav"), synth_clip(cls, rng))
            conf = float(rng.uniform(0.55, 0.95))
            rows.append({"utt_id": f"utt{n:04d}", "uri": uri, "status": "labeled", "label": cls, "label_index": true,
                         "confidence": conf, "scores": scores_for(true, conf)})
            expect["labeled_ok"] += 1
            n += 1
        for _ in range(2):  # a wrong weak label, with the low confidence such labels tend to have
            wrong = (true + 1) % len(classes)
            wrong_index = label_names.index(classes[wrong])
            uri = write_wav(os.path.join(audio_dir, f"utt{n:04d}.wav"), synth_clip(cls, rng))
            conf = float(rng.uniform(0.2, 0.3))
            rows.append({"utt_id": f"utt{n:04d}", "uri": uri, "status": "labeled", "label": classes[wrong],
                         "label_index": wrong_index, "confidence": conf, "scores": scores_for(wrong_index, conf)})
            expect["low_confidence"] += 1
            n += 1
    for _ in range(3):
        uri = write_wav(os.path.join(audio_dir, f"utt{n:04d}.wav"), 0.001 * rng.standard_normal(SR).astype(np.float32))
        rows.append({"utt_id": f"utt{n:04d}", "uri": uri, "status": "abstained", "abstain_reason": "no_speech"})
        expect["abstained"] += 1
        n += 1
    for _ in range(2):
        path = os.path.join(audio_dir, f"utt{n:04d}.wav")
        with open(path, "wb") as f:
            f.write(b"RIFF\x00\x00not really a wave file")
        rows.append({"utt_id": f"utt{n:04d}", "uri": path, "status": "error", "error": "decode: not a readable audio file"})
        expect["error"] += 1
        n += 1
    # Labeled once, deleted since: training must count it as unreadable, not crash or learn from it.
    rows.append({"utt_id": f"utt{n:04d}", "uri": os.path.join(audio_dir, "deleted.wav"), "status": "labeled",
                 "label": classes[0], "label_index": label_names.index(classes[0]), "confidence": 0.9,
                 "scores": scores_for(label_names.index(classes[0]), 0.9)})
    expect["missing_file"] += 1
    rng.shuffle(rows)
    write_labels_table(root, rows, "ekman", "1.0", "run-weak", parts=3)
    return expect


# --------------------------------------------------------------------------- corpora in published layouts

RAVDESS_CODES = {"neutral": "01", "calm": "02", "happy": "03", "sad": "04", "angry": "05", "fearful": "06", "disgust": "07", "surprised": "08"}


def build_ravdess(root: str, actors: list[int], emotions: list[str], per_emotion: int, seed: int = 0, seconds: float | None = None) -> str:
    """``root/Actor_NN/03-01-EE-II-SS-RR-NN.wav`` files following RAVDESS' naming."""
    rng = np.random.default_rng(seed)
    for actor in actors:
        for emo in emotions:
            for k in range(per_emotion):
                intensity, statement, repetition = 1 + k % 2, 1 + (k // 2) % 2, 1 + (k // 4) % 2
                name = f"03-01-{RAVDESS_CODES[emo]}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav"
                write_wav(os.path.join(root, f"Actor_{actor:02d}", name), synth_clip(emo, rng, seconds))
    return root


# --------------------------------------------------------------------------- configs

#: Classes the synthetic weak corpus uses (4 of ekman's 7: the head still has 7 outputs).
WEAK_CLASSES = ["anger", "joy", "sadness", "neutral"]
EKMAN = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


def tiny_train_config(**sections) -> dict:
    """A config dict for a tiny, fast model; ``sections`` override whole sections/fields."""
    base = {
        "features": {"n_mels": 32, "max_seconds": 1.5},
        "model": {"channels": 8, "blocks": [1, 1], "embed_dim": 32, "pooling": "meanstd", "dropout": 0.1},
        "optim": {"lr": 0.003, "warmup_epochs": 1},
        "train": {"epochs": 10, "batch_size": 8, "shuffle_buffer": 32},
        # One torch thread: the tiny model gains nothing from two, and the session's 2 cores are
        # shared with the decode tasks (test_trainer_throughput covers torch_threads: auto).
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.5, "data_batch_size": 16, "torch_threads": 1},
        "checkpoint": {"num_to_keep": 2, "metric": "val_ua"},
        "progress": False,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


# --------------------------------------------------------------------------- pretrained speech encoders

#: A tiny random encoder of each family: 2 layers of width 32 over a 3-layer CNN front end
#: with a 160-sample stride (100 frames per second), small enough for a CPU test.
TINY_ENCODER = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": (16, 16, 16), "conv_stride": (5, 4, 8), "conv_kernel": (10, 8, 8),
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "vocab_size": 8,
}


def build_tiny_encoder(path: str, family: str = "wavlm", do_normalize: bool = True, seed: int = 0) -> str:
    """A randomly initialised ``family`` encoder (wavlm, hubert, wav2vec2) written with
    ``save_pretrained`` into ``path``, with the ``preprocessor_config.json`` of a
    ``Wav2Vec2FeatureExtractor`` beside it, as on the hub."""
    import torch
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    settings = dict(TINY_ENCODER)
    if family == "wavlm":
        settings.update(num_buckets=32, max_bucket_distance=64)
    config = AutoConfig.for_model(family, **settings, feat_extract_norm="layer", do_stable_layer_norm=False)
    AutoModel.from_config(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=do_normalize, return_attention_mask=True
    ).save_pretrained(path)
    return path


# --------------------------------------------------------------------------- label efficiency (espeak-ng)

#: The synthesized emotion -> the Ekman label a weak labeler should give it.
EFFICIENCY_WEAK = {"neutral": "neutral", "happy": "joy", "sad": "sadness", "angry": "anger"}


def build_efficiency_corpora(root: str, per_emotion: int, actors: int, weak_accuracy: float, seed: int = 0) -> dict:
    """The label-efficiency data of ``bench/efficiency_corpus.py`` at test size: unlabeled
    espeak-ng clips (words and prosody follow the emotion) under ``root/unlabeled`` with a
    committed weak-labels table under ``root/weak`` whose labels are right for a
    ``weak_accuracy`` share of the clips (the rest another Ekman label, with the lower
    confidence a scorer gives its mistakes: the bench measures the real labeler on the same
    corpus), and a RAVDESS-layout tree of lexically neutral statements under ``root/RAVDESS``."""
    from bench.efficiency_corpus import split_voices, write_ravdess, write_unlabeled

    rng = np.random.default_rng(seed)
    actor_voices, pool = split_voices(seed, actors)
    clips = write_unlabeled(os.path.join(root, "unlabeled"), per_emotion, pool, seed)
    rows, right = [], 0
    for i, clip in enumerate(clips):
        true = EFFICIENCY_WEAK[clip.emotion]
        if rng.random() < weak_accuracy:
            label, conf = true, float(rng.uniform(0.45, 0.9))
            right += 1
        else:
            label, conf = str(rng.choice([e for e in EKMAN if e != true])), float(rng.uniform(0.3, 0.5))
        index = EKMAN.index(label)
        rest = rng.dirichlet(np.full(len(EKMAN) - 1, 50.0)) * (1 - conf)
        rows.append({"utt_id": f"clip{i:05d}", "uri": clip.path, "status": "labeled", "label": label, "label_index": index,
                     "confidence": conf, "scores": [float(x) for x in np.insert(rest, index, conf)]})
    weak = os.path.join(root, "weak")
    write_labels_table(weak, rows, "ekman", "1.0", "run-efficiency", parts=2)
    ravdess = os.path.join(root, "RAVDESS")
    write_ravdess(ravdess, actor_voices, seed + 1)
    return {"weak": weak, "ravdess": ravdess, "clips": len(clips), "weak_right": right, "actors": actors}
