"""What a pretrained speech encoder costs to train, against the log-mel ResNet, in the same run:
seconds of model compute per 1,000 training clips of 4 s.

    .venv/bin/python -m bench.encoder_cost [--batch 8] [--steps 3] [--threads 0]

The encoder is transformers' WavLM of the base architecture (``WavLMConfig()``'s defaults:
12 layers of 768, the CNN front end; 94.4 M parameters, as ``microsoft/wavlm-base-plus``)
built with random weights through ``AutoModel.from_config``: the same compute as the
published model, without the hub. Each variant runs the trainer's own model classes
(:func:`trainer.model.build_model`) on batches of 4-s crops of noise, one optimizer step per
batch (AdamW), on the CPU threads given (0 = torch's default):

- **resnet**: the laptop default of ``trainer/configs/pretrain.yaml`` (16 channels, 64 mels);
  its log-mel is computed by the data tasks, not here.
- **wavlm-frozen**: ``model.freeze: true``: the backbone runs without gradient; only the
  layer mix, projection and head train.
- **wavlm-finetuned**: ``model.freeze: false`` with ``freeze_feature_encoder: true``: the
  transformer layers train too (the CNN front end stays fixed).

The figure is the median step time after one warm-up step, per clip, times 1,000. It is the
model's compute only (no decoding, no Ray), which is what changes between the variants.
Results go to ``bench/out/encoder_cost.json`` with the load average: on a shared machine,
other work slows every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

SR = 16_000
CLIP_S = 4.0


def _resnet():
    from trainer.config import ModelConfig

    return ModelConfig().spec(64)


def _wavlm(folder: str, freeze: bool):
    from trainer.encoders import PretrainedSpec, resolve_spec

    return resolve_spec(PretrainedSpec(folder, freeze=freeze, encoder_lr=5e-5))


def _write_base_wavlm(folder: str) -> str:
    """A WavLM of the base architecture, random weights, saved as a hub folder would be."""
    from transformers import AutoModel, Wav2Vec2FeatureExtractor, WavLMConfig

    AutoModel.from_config(WavLMConfig()).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=False, return_attention_mask=True).save_pretrained(folder)
    return folder


def time_steps(spec, batch: int, steps: int, log_mel: bool) -> list[float]:
    """Seconds of each training step (forward, loss, backward, AdamW) on ``batch`` clips."""
    import torch

    from trainer.features import FeatureSpec
    from trainer.model import build_model

    model = build_model(spec, 7, pretrained_weights=not log_mel)
    model.train()
    optimizer = torch.optim.AdamW(model.param_groups(1e-3), lr=1e-3)
    if log_mel:
        fspec = FeatureSpec(n_mels=64, max_seconds=CLIP_S)
        x = torch.randn(batch, 64, fspec.max_frames)
        n = torch.full((batch,), fspec.max_frames)
    else:
        x = 0.1 * torch.randn(batch, 1, int(CLIP_S * SR))
        n = torch.full((batch,), int(CLIP_S * SR))
    y = torch.randint(0, 7, (batch,))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x, n), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return times[1:]  # the first step warms up allocators and kernels


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (the cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory(prefix="lanser-bench-enc-") as tmp:
        folder = _write_base_wavlm(os.path.join(tmp, "wavlm-base"))
        variants = {
            "resnet": (_resnet(), True),
            "wavlm-frozen": (_wavlm(folder, True), False),
            "wavlm-finetuned": (_wavlm(folder, False), False),
        }
        for name, (spec, log_mel) in variants.items():
            load_before = os.getloadavg()[0]
            times = time_steps(spec, args.batch, args.steps, log_mel)
            per_1000 = statistics.median(times) / args.batch * 1000
            results[name] = {"step_seconds": [round(t, 3) for t in times], "s_per_1000_clips": round(per_1000, 1),
                             "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
            print(f"{name:16s} {per_1000:8.1f} s per 1,000 clips of {CLIP_S:g} s (steps {results[name]['step_seconds']}, "
                  f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    base = results["resnet"]["s_per_1000_clips"]
    for name in ("wavlm-frozen", "wavlm-finetuned"):
        results[name]["x_resnet"] = round(results[name]["s_per_1000_clips"] / base, 1)
        print(f"{name}: {results[name]['x_resnet']}x the ResNet's compute per clip")
    out = {"batch": args.batch, "steps": args.steps, "threads": torch.get_num_threads(), "clip_seconds": CLIP_S,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "results": results}
    os.makedirs(os.path.join("bench", "out"), exist_ok=True)
    with open(os.path.join("bench", "out", "encoder_cost.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
