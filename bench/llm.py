"""Entailment scoring throughput: the llm backend on vLLM in bf16 and fp32, with and without
prefix sharing, against transformers and the nli backend, in transcript-label pairs per
second, labelled with the CPU they ran on.

    .venv/bin/python -m bench.llm [--nli-model DIR] [--llm-model DIR] [--transcripts 64] [--dtypes bfloat16,float32]

Transcripts are the reference texts of Debian's Asterisk prompts (``bench.speech``), the
taxonomy Ekman's seven labels. Each scorer is started once (start-up reported on its own),
warmed up on texts outside the measured set, then scores every (transcript, label) pair
in batches of ``batch_size`` transcripts, as the entailment stage calls it.

- ``llm vllm <dtype>, prefix sharing``: transcript-first prompts, vLLM prefix caching on:
  the instruction and each transcript are computed once, each label adds a short suffix.
- ``llm vllm <dtype>, no prefix sharing``: the same prompts and engine, prefix caching off.
- ``llm transformers float32``: the same prompts through transformers, for CPU users.
- ``nli``: the transformers NLI cross-encoder given by ``nli_model``.

The machine is printed with the figures: CPU model, the flags that decide whether bf16
runs in hardware (``amx_bf16``, ``avx512_bf16``; ``avx512f``, ``avx2``), cores, what
``scorer.dtype: auto`` picks there, and the load average (figures from a busy machine are
low). Equality is measured, not assumed: prefix sharing on vs off per dtype, and each
vLLM dtype against transformers fp32.

Defaults need nothing from a hub: SmolLM2-135M-Instruct and the tiny NLI model of the
test fixture cache (built on first use). ``bench/__main__.py`` calls :func:`run_llm_bench`
and prints :func:`report_lines`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# vLLM on CPU: compute on every core (it reserves one for an API server otherwise).
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / ".fixtures" / "v1"


def _fixture(name: str, builder: str, *args) -> str:
    """A model from the test fixture cache, built with ``tests/fixtures.py`` when missing."""
    path = FIXTURES / name
    if not (path / "config.json").exists():
        sys.path.insert(0, str(REPO / "tests"))
        import fixtures  # noqa: E402 - the test suite's builders

        getattr(fixtures, builder)(path, *args)
    return str(path)


def default_llm_model() -> str:
    return _fixture("smollm2-135m-instruct", "build_smollm2")


def default_nli_model() -> str:
    return _fixture("tiny-nli", "build_tiny_nli", {0: "entailment", 1: "neutral", 2: "contradiction"})


def _warmup_texts(n: int) -> list[str]:
    return [f"Warm-up sentence number {i}, not part of the measured set." for i in range(n)]


def _time_scorer(name: str, build, transcripts: Sequence[str], hypotheses: Sequence[str], batch_size: int) -> dict[str, Any]:
    import numpy as np

    t0 = time.perf_counter()
    scorer = build()
    startup = time.perf_counter() - t0
    try:
        warm = _warmup_texts(4)
        scorer.score_pairs(warm, hypotheses, [(p, h) for p in range(len(warm)) for h in range(len(hypotheses))])
        raws = []
        t0 = time.perf_counter()
        for start in range(0, len(transcripts), batch_size):
            chunk = list(transcripts[start : start + batch_size])
            pairs = [(p, h) for p in range(len(chunk)) for h in range(len(hypotheses))]
            raws.append(scorer.score_pairs(chunk, hypotheses, pairs).reshape(len(chunk), len(hypotheses)))
        wall = time.perf_counter() - t0
        stats = dict(getattr(getattr(scorer, "lm", None), "stats", None) or {})
        dtype = getattr(scorer, "dtype", None)
    finally:
        if hasattr(scorer, "close"):
            scorer.close()
    raw = np.concatenate(raws)
    n_pairs = raw.size
    out = {"name": name, "dtype": dtype, "startup_s": round(startup, 2), "wall_s": round(wall, 3), "pairs": int(n_pairs),
           "pairs_per_s": round(n_pairs / wall, 2), "raw": raw}
    if stats.get("prompt_tokens"):  # vLLM: share of prompt tokens served from the prefix cache (warm-up included)
        out["prefix_cache_hit_share"] = round(stats["cached_tokens"] / stats["prompt_tokens"], 3)
    return out


def machine_info() -> dict[str, Any]:
    """The CPU the figures come from: model, the flags that decide a model's speed (AMX,
    AVX-512 BF16, AVX-512, AVX2; aarch64's bf16), cores, and what ``dtype: auto`` picks on it."""
    from labeler.models.device import REPORTED_FLAGS, choose_dtype, cpu_bf16_hardware, cpu_model, read_cpu_flags

    flags = read_cpu_flags()
    auto, reason = choose_dtype("auto", "vllm", "cpu", flags)
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": None if flags is None else {f: f in flags for f in REPORTED_FLAGS},
        "bf16_hardware": cpu_bf16_hardware(flags),
        "auto_dtype": auto,
        "auto_dtype_reason": reason,
    }


def machine_line(m: dict[str, Any]) -> str:
    """``AMD EPYC, x86_64, 2 cores; flags: avx2 yes, avx512f no, ...`` for a figure's label."""
    flags = m.get("cpu_flags")
    shown = "unknown" if flags is None else ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
    return f"{m['cpu']}, {m['arch']}, {m['cores']} cores; CPU flags: {shown}"


def _load() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class _LoadSampler:
    """The 1-minute load average every ``every_s`` seconds while the bench runs: other work
    on the machine lowers every figure, so the load is reported with them."""

    def __init__(self, every_s: float = 15.0) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while True:
            load = _load()
            if load is not None:
                self.samples.append(load)
            if self._stop.wait(every_s):
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        s = self.samples
        return {"before": s[0] if s else None, "mean": round(sum(s) / len(s), 2) if s else None,
                "max": max(s) if s else None, "after": _load()}


def run_llm_bench(transcripts: list[str], taxonomy, nli_model: str, *, llm_model: Optional[str] = None,
                  dtypes: Sequence[str] = ("bfloat16", "float32"), enforce_eager: bool = False, batch_size: int = 64,
                  max_model_len: int = 1024, include_transformers: bool = True, include_nli: bool = True) -> dict[str, Any]:
    """Pairs per second of each scorer on ``transcripts`` x ``taxonomy``'s hypotheses, on this
    machine (its CPU and flags recorded under ``machine``).

    ``taxonomy`` is a :class:`labeler.taxonomy.Taxonomy` or a shipped name. vLLM runs once
    per dtype in ``dtypes`` with prefix sharing and once without; transformers in fp32.
    Returns a JSON-ready dict: one entry per scorer under ``results`` (the dtype it ran in,
    start-up, wall, pairs/s), and under ``equality`` per vLLM dtype: the largest |difference|
    of the log-odds between prefix sharing on and off (same prompts, same engine settings),
    and against transformers fp32 the largest |difference| and the share of transcripts
    whose top label agrees. ``default`` compares ``dtype: auto`` (which is one of
    ``dtypes``' runs on this machine) with transformers.
    """
    import numpy as np

    from labeler.config import ScorerConfig
    from labeler.models.llm import LLMScorer
    from labeler.models.nli import NLIScorer
    from labeler.taxonomy import load_taxonomy

    tax = load_taxonomy(taxonomy) if isinstance(taxonomy, str) else taxonomy
    hyps = list(tax.hypotheses)
    llm_model = llm_model or default_llm_model()
    threads = os.cpu_count() or 1
    machine = machine_info()
    sampler = _LoadSampler()

    def vllm(dtype: str, prefix: bool):
        return lambda: LLMScorer(ScorerConfig(backend="llm", engine="vllm", model=llm_model, dtype=dtype, max_model_len=max_model_len,
                                              prefix_caching=prefix, enforce_eager=enforce_eager))

    runs = []
    for dtype in dtypes:
        runs.append(_time_scorer(f"llm vllm {dtype}, prefix sharing", vllm(dtype, True), transcripts, hyps, batch_size))
        runs.append(_time_scorer(f"llm vllm {dtype}, no prefix sharing", vllm(dtype, False), transcripts, hyps, batch_size))
    if include_transformers:
        runs.append(_time_scorer(
            "llm transformers float32", lambda: LLMScorer(ScorerConfig(backend="llm", engine="transformers", model=llm_model, device="cpu",
                                                                       dtype="float32", max_model_len=max_model_len, torch_threads=threads,
                                                                       pair_batch_size=16, pair_token_budget=1024)),
            transcripts, hyps, batch_size))
    if include_nli:
        runs.append(_time_scorer("nli", lambda: NLIScorer(ScorerConfig(backend="nli", model=nli_model, device="cpu", torch_threads=threads)),
                                 transcripts, hyps, batch_size))

    load = sampler.stop()
    raw = {r["name"]: r.pop("raw") for r in runs}
    by_name = {r["name"]: r for r in runs}
    hf = raw.get("llm transformers float32")
    equality: dict[str, Any] = {}
    for dtype in dtypes:
        on, off = raw[f"llm vllm {dtype}, prefix sharing"], raw[f"llm vllm {dtype}, no prefix sharing"]
        eq = {"prefix_on_off_max_abs_diff": float(np.abs(on - off).max()),
              "prefix_on_off_top_label_agreement": float((on.argmax(1) == off.argmax(1)).mean()),
              "prefix_speedup": round(by_name[f"llm vllm {dtype}, no prefix sharing"]["wall_s"] / by_name[f"llm vllm {dtype}, prefix sharing"]["wall_s"], 2)}
        if hf is not None:
            eq["vs_transformers_fp32_max_abs_diff"] = float(np.abs(on - hf).max())
            eq["vs_transformers_fp32_top_label_agreement"] = float((on.argmax(1) == hf.argmax(1)).mean())
        equality[dtype] = eq
    # Labels closer than a bf16 error: how often the top two lie within 0.1 nats (transformers fp32).
    close = None
    if hf is not None and hf.shape[1] > 1:
        top2 = np.sort(hf, axis=1)[:, -2:]
        close = float(((top2[:, 1] - top2[:, 0]) < 0.1).mean())

    res: dict[str, Any] = {
        "transcripts": len(transcripts),
        "labels": len(hyps),
        "taxonomy": tax.name,
        "llm_model": llm_model,
        "nli_model": nli_model,
        "dtypes": list(dtypes),
        "enforce_eager": enforce_eager,
        "batch_size": batch_size,
        "machine": machine,
        "load_avg_1min": load,
        "results": runs,
        "equality": equality,
        "top_two_within_0_1_nats_share": close,
    }
    default = f"llm vllm {machine['auto_dtype']}, prefix sharing"
    if default in by_name and "llm transformers float32" in by_name:
        res["default"] = {"run": default, "pairs_per_s": by_name[default]["pairs_per_s"],
                          "transformers_pairs_per_s": by_name["llm transformers float32"]["pairs_per_s"],
                          "ratio": round(by_name[default]["pairs_per_s"] / by_name["llm transformers float32"]["pairs_per_s"], 2)}
    return res


def report_lines(res: dict[str, Any]) -> list[str]:
    """The result as a small table of text lines, labelled with the machine it ran on."""
    m = res["machine"]
    load = res.get("load_avg_1min", {})
    lines = [
        f"entailment scoring: {res['transcripts']} transcripts x {res['labels']} labels ({res['taxonomy']}), "
        f"batches of {res['batch_size']} transcripts",
        f"  machine: {machine_line(m)}",
        f"  scorer.dtype auto here: {m['auto_dtype']} ({m['auto_dtype_reason']})",
        f"  1-min load average during the run: {load.get('before')} at the start, mean {load.get('mean')}, "
        f"max {load.get('max')}, {load.get('after')} at the end ({m['cores']} cores)",
        f"  llm: {res['llm_model']}{' (vLLM eager)' if res['enforce_eager'] else ''}; nli: {res['nli_model']}",
        f"  {'scorer':<38} {'dtype':>9} {'start-up s':>10} {'wall s':>8} {'pairs/s':>9} {'prefix cache hits':>18}",
    ]
    for r in res["results"]:
        hits = f"{100 * r['prefix_cache_hit_share']:.0f}% of tokens" if "prefix_cache_hit_share" in r else "-"
        lines.append(f"  {r['name']:<38} {r.get('dtype', '-'):>9} {r['startup_s']:>10.1f} {r['wall_s']:>8.2f} {r['pairs_per_s']:>9.1f} {hits:>18}")
    for dtype, eq in res["equality"].items():
        line = (f"  vLLM {dtype}: prefix sharing {eq['prefix_speedup']:.2f}x the pairs/s of none; on vs off max |diff| "
                f"{eq['prefix_on_off_max_abs_diff']:.1e} log-odds, same top label {100 * eq['prefix_on_off_top_label_agreement']:.0f}%")
        if "vs_transformers_fp32_max_abs_diff" in eq:
            line += (f"; vs transformers fp32 max |diff| {eq['vs_transformers_fp32_max_abs_diff']:.1e}, "
                     f"same top label {100 * eq['vs_transformers_fp32_top_label_agreement']:.0f}%")
        lines.append(line)
    if res.get("top_two_within_0_1_nats_share") is not None:
        lines.append(f"  transcripts whose top two labels lie within 0.1 nats (transformers fp32): "
                     f"{100 * res['top_two_within_0_1_nats_share']:.0f}%")
    if "default" in res:
        d = res["default"]
        lines.append(f"  default llm + vllm (dtype auto = {m['auto_dtype']}): {d['pairs_per_s']:.1f} pairs/s, "
                     f"{d['ratio']:.2f}x llm + transformers ({d['transformers_pairs_per_s']:.1f})")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    p.add_argument("--nli-model", help="NLI model folder or hub id (default: the tiny NLI of the fixture cache)")
    p.add_argument("--llm-model", help="causal LM folder (default: SmolLM2-135M-Instruct, built into the fixture cache)")
    p.add_argument("--transcripts", type=int, default=64, help="Asterisk prompt texts to score (default 64)")
    p.add_argument("--dtypes", default="bfloat16,float32", help="vLLM dtypes to measure, comma-separated (default bfloat16,float32)")
    p.add_argument("--eager", action="store_true", help="vLLM enforce_eager: no torch.compile (faster start-up)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "llm_throughput.json"), help="JSON result file")
    args = p.parse_args(argv)

    from bench.speech import asterisk_clips

    clips = asterisk_clips(min_total_s=1e9, limit=args.transcripts)
    transcripts = [c.reference for c in clips]
    res = run_llm_bench(transcripts, "ekman", args.nli_model or default_nli_model(), llm_model=args.llm_model,
                        dtypes=[d.strip() for d in args.dtypes.split(",") if d.strip()], enforce_eager=args.eager)
    print("\n".join(report_lines(res)))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
