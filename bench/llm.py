"""Entailment scoring throughput: the llm backend on vLLM with and without prefix sharing,
against the nli backend, in transcript-label pairs per second.

    .venv/bin/python -m bench.llm [--nli-model DIR] [--llm-model DIR] [--transcripts 64]

Transcripts are the reference texts of Debian's Asterisk prompts (``bench.speech``), the
taxonomy Ekman's seven labels. Each scorer is started once (start-up reported on its own),
warmed up on texts outside the measured set, then scores every (transcript, label) pair
in batches of ``batch_size`` transcripts, as the entailment stage calls it.

- ``llm vllm, prefix sharing``: transcript-first prompts, vLLM prefix caching on: the
  instruction and each transcript are computed once, each label adds a short suffix.
- ``llm vllm, no prefix sharing``: the same prompts and engine, prefix caching off.
- ``llm transformers``: the same prompts through transformers (fp32), for CPU users.
- ``nli``: the transformers NLI cross-encoder given by ``nli_model``.

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
    finally:
        if hasattr(scorer, "close"):
            scorer.close()
    raw = np.concatenate(raws)
    n_pairs = raw.size
    out = {"name": name, "startup_s": round(startup, 2), "wall_s": round(wall, 3), "pairs": int(n_pairs),
           "pairs_per_s": round(n_pairs / wall, 2), "raw": raw}
    if stats.get("prompt_tokens"):  # vLLM: share of prompt tokens served from the prefix cache (warm-up included)
        out["prefix_cache_hit_share"] = round(stats["cached_tokens"] / stats["prompt_tokens"], 3)
    return out


def run_llm_bench(transcripts: list[str], taxonomy, nli_model: str, *, llm_model: Optional[str] = None,
                  dtype: str = "auto", enforce_eager: bool = False, batch_size: int = 64,
                  max_model_len: int = 1024, include_transformers: bool = True) -> dict[str, Any]:
    """Pairs per second of each scorer on ``transcripts`` x ``taxonomy``'s hypotheses.

    ``taxonomy`` is a :class:`labeler.taxonomy.Taxonomy` or a shipped name. Returns a
    JSON-ready dict: one entry per scorer under ``results`` (start-up, wall, pairs/s) and
    ``prefix_speedup`` (prefix sharing over none), plus the largest score difference
    between the two vLLM runs (same prompts: should be ~0) and their argmax agreement
    with the transformers run.
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

    def vllm(prefix: bool):
        return lambda: LLMScorer(ScorerConfig(backend="llm", engine="vllm", model=llm_model, dtype=dtype, max_model_len=max_model_len,
                                              prefix_caching=prefix, enforce_eager=enforce_eager))

    runs = [
        _time_scorer("llm vllm, prefix sharing", vllm(True), transcripts, hyps, batch_size),
        _time_scorer("llm vllm, no prefix sharing", vllm(False), transcripts, hyps, batch_size),
    ]
    if include_transformers:
        runs.append(_time_scorer(
            "llm transformers", lambda: LLMScorer(ScorerConfig(backend="llm", engine="transformers", model=llm_model, device="cpu",
                                                               max_model_len=max_model_len, torch_threads=threads,
                                                               pair_batch_size=16, pair_token_budget=1024)),
            transcripts, hyps, batch_size))
    runs.append(_time_scorer("nli", lambda: NLIScorer(ScorerConfig(backend="nli", model=nli_model, device="cpu", torch_threads=threads)), transcripts, hyps, batch_size))

    raw = {r["name"]: r.pop("raw") for r in runs}
    on, off = raw["llm vllm, prefix sharing"], raw["llm vllm, no prefix sharing"]
    res: dict[str, Any] = {
        "transcripts": len(transcripts),
        "labels": len(hyps),
        "taxonomy": tax.name,
        "llm_model": llm_model,
        "nli_model": nli_model,
        "dtype": dtype,
        "enforce_eager": enforce_eager,
        "batch_size": batch_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "results": runs,
        "prefix_speedup": round(runs[1]["wall_s"] / runs[0]["wall_s"], 2),
        "vllm_prefix_on_off_max_abs_diff": float(np.abs(on - off).max()),
    }
    if include_transformers:
        res["vllm_transformers_argmax_agreement"] = float((on.argmax(1) == raw["llm transformers"].argmax(1)).mean())
    return res


def report_lines(res: dict[str, Any]) -> list[str]:
    """The result as a small table of text lines."""
    lines = [
        f"entailment scoring: {res['transcripts']} transcripts x {res['labels']} labels ({res['taxonomy']}), "
        f"batches of {res['batch_size']} transcripts, {res['machine']}",
        f"  llm: {res['llm_model']} (vLLM dtype {res['dtype']}{', eager' if res['enforce_eager'] else ''}); nli: {res['nli_model']}",
        f"  {'scorer':<30} {'start-up s':>10} {'wall s':>8} {'pairs/s':>9} {'prefix cache hits':>18}",
    ]
    for r in res["results"]:
        hits = f"{100 * r['prefix_cache_hit_share']:.0f}% of tokens" if "prefix_cache_hit_share" in r else "-"
        lines.append(f"  {r['name']:<30} {r['startup_s']:>10.1f} {r['wall_s']:>8.2f} {r['pairs_per_s']:>9.1f} {hits:>18}")
    lines.append(f"  prefix sharing: {res['prefix_speedup']:.2f}x the pairs/s of no sharing "
                 f"(scores equal to {res['vllm_prefix_on_off_max_abs_diff']:.1e})")
    if "vllm_transformers_argmax_agreement" in res:
        lines.append(f"  vLLM and transformers agree on the top label for {100 * res['vllm_transformers_argmax_agreement']:.0f}% of transcripts")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    p.add_argument("--nli-model", help="NLI model folder or hub id (default: the tiny NLI of the fixture cache)")
    p.add_argument("--llm-model", help="causal LM folder (default: SmolLM2-135M-Instruct, built into the fixture cache)")
    p.add_argument("--transcripts", type=int, default=64, help="Asterisk prompt texts to score (default 64)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="vLLM dtype (auto = bf16 on CPU)")
    p.add_argument("--eager", action="store_true", help="vLLM enforce_eager: no torch.compile (faster start-up)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "llm_throughput.json"), help="JSON result file")
    args = p.parse_args(argv)

    from bench.speech import asterisk_clips

    clips = asterisk_clips(min_total_s=1e9, limit=args.transcripts)
    transcripts = [c.reference for c in clips]
    res = run_llm_bench(transcripts, "ekman", args.nli_model or default_nli_model(), llm_model=args.llm_model,
                        dtype=args.dtype, enforce_eager=args.eager)
    print("\n".join(report_lines(res)))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
