"""Labeling throughput on real speech: lanser against the naive loop, stage by stage.

    make bench            # or: .venv/bin/python -m bench [--seconds 300] [--skip-llm]

Real human speech: Debian's Asterisk prompts (one voice, 8 kHz), with ``core-sounds-en.txt``
as reference transcripts. Every measured run starts with empty transcript and score caches;
both sides of a comparison use the same clips, models and settings, in the same process
run, with a warm-up excluded from both.

1. **ASR**: the naive loop (one faster-whisper ``transcribe`` per clip) against lanser's ASR
   stage (``ASRStage`` on Arrow batches: short clips packed into shared 30-s windows), the
   packaged Whisper tiny.en (int8), beam 5, audio decoded beforehand for both. Audio
   seconds per wall second, and the WER of both against the references. Both sides run
   ``--asr-repeat`` times (3) in alternation and each gives its median run's figures.
2. **Entailment**: the Hugging Face ``zero-shot-classification`` pipeline (as called by
   default, one pair per forward pass, and with ``batch_size=16``) against lanser's
   ``nli`` stage (``EntailStage``: identical transcripts once, pairs sorted by length and
   batched by token budget), on the transcripts of step 1 and the Ekman taxonomy, with a
   DeBERTa-v3-base-sized NLI model built locally (speed does not depend on the weights).
   Pairs per second, and the largest difference between the two sides' probabilities.
3. **LLM scoring** (``bench.llm``): the ``llm`` backend on vLLM with and without prefix
   sharing, against the ``nli`` backend (skipped with ``--skip-llm`` or without vLLM).
4. **End to end**: the whole labeling run (Ray Data pipeline from the audio files to the
   committed Parquet tables; Ray started beforehand, actor start-up and model loading
   included) against the naive loop of both stages (per clip: decode, ``transcribe``,
   the zero-shot pipeline). Then a relabel of the same corpus with a new taxonomy
   (iemocap4) from the stored transcripts, timed against the first run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SR = 16_000


def _zero_shot(model_path: str, threads: int):
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    return pipeline("zero-shot-classification", model=model_path, device=-1)


def _pipeline_probs(outputs, labels) -> "list[list[float]]":
    if isinstance(outputs, dict):
        outputs = [outputs]
    return [[o["scores"][o["labels"].index(lab)] for lab in labels] for o in outputs]


def _template(taxonomy) -> str:
    hyps = [taxonomy.hypothesis_template.replace("{label}", lab) for lab in taxonomy.label_names]
    if hyps != list(taxonomy.hypotheses):
        raise SystemExit(f"taxonomy {taxonomy.name}: the zero-shot pipeline needs one hypothesis template for every label")
    return taxonomy.hypothesis_template.replace("{label}", "{}")


# -- 1. ASR ---------------------------------------------------------------------------
class TimedWhisper:
    """A CTranslate2 ``Whisper`` whose ``encode``, ``generate`` and ``align`` calls add their
    wall seconds to ``spent``: where each side of the ASR comparison spends its time (the
    encoder costs the same per 30-s window on both sides; packing saves encoder passes, not
    decoding steps, since both sides generate the same text). ``whole`` counts the windows
    of each call: encoder windows, and the seconds and windows of ``generate`` and ``align``
    calls on whole 30-s windows (not the cropped encoder frames of anchored decodes), so a
    window's own cost can be told from what failures add."""

    TIMED = ("encode", "generate", "align")
    WHOLE_FRAMES = 1500  # encoder positions of a 30-s window

    def __init__(self, model, spent: dict, whole: Optional[dict] = None) -> None:
        self._model, self._spent, self._whole = model, spent, whole if whole is not None else {}

    def __getattr__(self, name):
        attr = getattr(self._model, name)
        if name not in self.TIMED:
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                took = time.perf_counter() - t0
                self._spent[name] = self._spent.get(name, 0.0) + took
                shape = list(getattr(args[0], "shape", None) or []) if args else []
                if shape and (name == "encode" or (len(shape) == 3 and shape[1] >= self.WHOLE_FRAMES)):
                    self._whole[f"{name}_s"] = self._whole.get(f"{name}_s", 0.0) + took
                    self._whole[f"{name}_windows"] = self._whole.get(f"{name}_windows", 0) + int(shape[0])
        return timed

    @staticmethod
    def window_cost(whole: dict) -> float:
        """Seconds of one window that passes its first decode: an encoder pass, a whole-window
        beam search and, where words were aligned, an alignment (each the run's mean)."""
        return sum(whole[f"{k}_s"] / whole[f"{k}_windows"] for k in TimedWhisper.TIMED if whole.get(f"{k}_windows"))


def fewest_windows(durations, window_s: float, gap_s: float) -> int:
    """The fewest packed windows the clips could fill: a window of m clips holds their
    seconds and m - 1 gaps within ``window_s``, so k windows need the clips' seconds plus
    (n - k) gaps to fit in k x ``window_s``."""
    return max(1, math.ceil((sum(durations) + len(durations) * gap_s) / (window_s + gap_s)))


def _spent(spent: dict) -> dict:
    return {k: round(spent.get(k, 0.0), 2) for k in TimedWhisper.TIMED}


def bench_asr(clips, audios, asr_cfg, repeat: int = 1) -> dict:
    """Both ASR sides on the same clips, ``repeat`` times in alternation (naive, stage, naive,
    stage, ...); each side's figures are those of its median run by wall time, so one run
    slowed by the machine's load does not set the ratio. Every stage run is a fresh stage (a
    new run learns its packing health from scratch), its model load excluded."""
    import pyarrow as pa
    from faster_whisper import WhisperModel

    from bench.speech import wer
    from labeler.models.registry import resolve_model
    from labeler.config import LabelConfig
    from labeler.stages.asr import ASRStage
    from labeler.stages.base import StageContext

    threads = os.cpu_count() or 1
    refs = [c.reference for c in clips]
    audio_s = sum(len(a) for a in audios) / SR

    model = WhisperModel(resolve_model(asr_cfg.model), device="cpu", compute_type=asr_cfg.compute_type, cpu_threads=threads)
    opts = dict(language=asr_cfg.language, beam_size=asr_cfg.beam_size, vad_filter=asr_cfg.vad_filter,
                condition_on_previous_text=asr_cfg.condition_on_previous_text)
    ct2 = model.model

    def naive_one(a):
        segments, _ = model.transcribe(a, **opts)
        return " ".join(s.text.strip() for s in segments).strip()

    naive_one(audios[0])  # warm-up, excluded

    def naive_run() -> dict:
        spent: dict = {}
        model.model = TimedWhisper(ct2, spent)
        t0, c0 = time.perf_counter(), time.process_time()
        texts = [naive_one(a) for a in audios]
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "texts": texts, "spent": spent}

    def table(rows):
        n = len(rows)
        return pa.table({
            "utt_id": [str(i) for i in rows], "uri": [clips[i].path for i in rows], "audio_sha256": [str(i) for i in rows],
            "duration_s": [len(audios[i]) / SR for i in rows], "audio": [audios[i].tobytes() for i in rows],
            "error": [None] * n, "text": [None] * n, "language": [None] * n,
            "language_prob": pa.array([None] * n, pa.float32()), "avg_logprob": pa.array([None] * n, pa.float32()),
            "no_speech_prob": pa.array([None] * n, pa.float32()),
            # short clips as decode leaves them: each one utterance spanning the clip
            "source_id": [str(i) for i in rows], "segment_index": [0] * n, "start_s": [0.0] * n,
            "end_s": [len(audios[i]) / SR for i in rows], "speech": pa.array([None] * n, pa.list_(pa.list_(pa.float64(), 2))),
            "source_utterances": [1] * n, "asr_config_hash": pa.array([None] * n, pa.string()),
        })

    batches = [list(range(i, min(i + asr_cfg.batch_size, len(audios)))) for i in range(0, len(audios), asr_cfg.batch_size)]
    tables = [table(b) for b in batches]

    def stage_run() -> dict:
        stage = ASRStage(LabelConfig(asr=asr_cfg.model_copy(update={"cpu_threads": threads})), StageContext())
        stage(table([0, 1, 2]))  # warm-up (model load), excluded
        stats0 = dict(stage.model.stats)
        spent: dict = {}
        whole: dict = {}
        stage.model.model.model = TimedWhisper(stage.model.model.model, spent, whole)
        t0, c0 = time.perf_counter(), time.process_time()
        outs = [stage(t) for t in tables]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        texts = [x or "" for o in outs for x in o.column("text").to_pylist()]
        stats = {k: v - stats0.get(k, 0) for k, v in stage.model.stats.items()}
        return {"wall_s": wall, "cpu_s": cpu, "texts": texts, "spent": spent, "whole": whole, "stats": stats}

    naive_runs, stage_runs = [], []
    for _ in range(max(1, repeat)):
        naive_runs.append(naive_run())
        stage_runs.append(stage_run())
    n, s = median_run(naive_runs), median_run(stage_runs)
    naive_s, naive_cpu, naive = n["wall_s"], n["cpu_s"], n["texts"]
    lanser_s, lanser_cpu, lanser = s["wall_s"], s["cpu_s"], s["texts"]
    decoding_s = s["spent"].get("generate", 0.0) + s["spent"].get("align", 0.0)
    # The most any packing of these clips could reach on this machine at these settings:
    # the fewest windows they fit in (gaps counted), each passing its first decode, at this
    # run's CTranslate2 cost of such a window, and nothing else costing anything.
    fewest = fewest_windows([len(a) / SR for a in audios], asr_cfg.pack_window_s, asr_cfg.pack_gap_s)
    per_window_s = TimedWhisper.window_cost(s["whole"])
    return {
        "audio_seconds": round(audio_s, 1),
        "runs": len(naive_runs),
        "naive": {"wall_s": round(naive_s, 2), "cpu_s": round(naive_cpu, 2), "audio_s_per_s": round(audio_s / naive_s, 2), "wer_pct": round(wer(refs, naive), 2),
                  "ctranslate2_s": _spent(n["spent"]), "wall_s_runs": [round(r["wall_s"], 2) for r in naive_runs]},
        "lanser": {"wall_s": round(lanser_s, 2), "cpu_s": round(lanser_cpu, 2), "audio_s_per_s": round(audio_s / lanser_s, 2), "wer_pct": round(wer(refs, lanser), 2),
                   "batch_size": asr_cfg.batch_size, "windows_per_batch": asr_cfg.chunk_batch_size,
                   "windows_per_beam_search": asr_cfg.beam_search_windows,
                   "ctranslate2_s": _spent(s["spent"]), "wall_s_runs": [round(r["wall_s"], 2) for r in stage_runs], **s["stats"]},
        "ratio": round(naive_s / lanser_s, 2),
        # each alternation's own ratio: how far one run's load moves it
        "ratio_runs": [round(a["wall_s"] / b["wall_s"], 2) for a, b in zip(naive_runs, stage_runs)],
        # The most this stage's decoding leaves room for: the ratio if its encoder passes and
        # everything else cost nothing (the naive loop's time over the stage's generate + align).
        "ceiling_encoder_free": round(naive_s / max(decoding_s, 1e-9), 2),
        "fewest_windows": fewest,
        "ctranslate2_s_per_window": round(per_window_s, 3),
        "ceiling_fewest_windows": round(naive_s / max(fewest * per_window_s, 1e-9), 2),
        # CPU seconds of this process (both sides run in it): steadier than wall time when
        # other jobs load the machine
        "cpu_ratio": round(naive_cpu / max(lanser_cpu, 1e-9), 2),
        "wer_delta_points": round(wer(refs, lanser) - wer(refs, naive), 2),
        "transcripts": lanser,
    }


def asr_detail_lines(r: dict) -> list[str]:
    """The lines below an ASR comparison of :func:`bench_asr` (``make bench`` and ``make
    bench-asr`` print the same): where each side's CTranslate2 time went, the two bounds,
    and each run's times when there were several."""
    nc, sc = r["naive"]["ctranslate2_s"], r["lanser"]["ctranslate2_s"]
    lines = [
        f"CTranslate2 s: naive encode {nc['encode']:.2f}, generate {nc['generate']:.2f}; stage encode {sc['encode']:.2f}, "
        f"generate {sc['generate']:.2f}, align {sc['align']:.2f}; ratio with the stage's encoder free: {r['ceiling_encoder_free']:.2f}x",
        f"{r['ctranslate2_s_per_window']:.2f} CTranslate2 s per window that passes its first decode; in the fewest windows "
        f"the clips fit ({r['fewest_windows']}, gaps counted) the ratio would be at most {r['ceiling_fewest_windows']:.2f}x",
    ]
    if r["runs"] > 1:
        joined = lambda xs, unit="": ", ".join(f"{x:.2f}{unit}" for x in xs)  # noqa: E731
        lines.append(f"median of {r['runs']} alternating runs per side; wall s of each run: naive "
                     f"{joined(r['naive']['wall_s_runs'])}; stage {joined(r['lanser']['wall_s_runs'])}; "
                     f"ratios {joined(r['ratio_runs'], 'x')}")
    return lines


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return ordered[(len(ordered) - 1) // 2]


# -- 2. Entailment --------------------------------------------------------------------
def bench_entail(transcripts, taxonomy, scorer_cfg, abstain_cfg, nli_model: str) -> dict:
    import numpy as np
    import pyarrow as pa

    from labeler.collector import Collector
    from labeler.config import LabelConfig
    from labeler.stages.base import StageContext
    from labeler.stages.entail import EntailStage

    threads = os.cpu_count() or 1
    texts = [t for t in transcripts if t.strip()]
    labels, template = taxonomy.label_names, _template(taxonomy)
    n_pairs = len(texts) * len(labels)
    warm = ["Warm-up sentence, not measured.", "Another one, a little longer than the first."]

    zsc = _zero_shot(nli_model, threads)
    baseline = {}
    for name, kwargs in (("hf_default", {}), ("hf_batch16", {"batch_size": 16})):
        zsc(warm, candidate_labels=labels, hypothesis_template=template, **kwargs)
        t0 = time.perf_counter()
        out = zsc(texts, candidate_labels=labels, hypothesis_template=template, **kwargs)
        wall = time.perf_counter() - t0
        baseline[name] = {"wall_s": round(wall, 2), "pairs_per_s": round(n_pairs / wall, 2)}
        ref = np.array(_pipeline_probs(out, labels), dtype=np.float32)
    del zsc

    cfg = scorer_cfg.model_copy(update={"backend": "nli", "model": nli_model, "device": "cpu", "torch_threads": threads})
    collector = Collector(tempfile.mkdtemp(prefix="lanser-bench-"), "bench", "a", rows_per_file=1 << 30)  # counters only
    stage = EntailStage(LabelConfig(scorer=cfg, abstain=abstain_cfg), StageContext(taxonomy=taxonomy, collector=collector))

    def table(rows):
        n = len(rows)
        return pa.table({"utt_id": [str(i) for i in range(n)], "text": rows, "no_speech_prob": pa.array([0.0] * n, pa.float32()),
                         "avg_logprob": pa.array([-0.1] * n, pa.float32()), "error": pa.array([None] * n, pa.string())})

    stage(table(warm))  # warm-up (model load), excluded; its pairs are not in the measured set
    stage.memo.clear()
    before = collector.stages["score"]["n_pairs_scored"]
    tables = [table(texts[i : i + cfg.batch_size]) for i in range(0, len(texts), cfg.batch_size)]
    t0 = time.perf_counter()
    outs = [stage(t) for t in tables]
    wall = time.perf_counter() - t0
    probs = np.array([s for o in outs for s in o.column("scores").to_pylist()], dtype=np.float32)
    scored = collector.stages["score"]["n_pairs_scored"] - before
    lanser = {"wall_s": round(wall, 2), "pairs_per_s": round(n_pairs / wall, 2), "pairs_scored_by_model": int(scored),
              "pair_token_budget": cfg.pair_token_budget}
    return {
        "model": "DeBERTa-v3-base-sized NLI (184M parameters, built locally, random weights)",
        "transcripts": len(texts), "unique_transcripts": len(set(t.strip() for t in texts)), "labels": len(labels), "pairs": n_pairs,
        **baseline, "lanser": lanser,
        "ratio_vs_hf_default": round(lanser["pairs_per_s"] / baseline["hf_default"]["pairs_per_s"], 2),
        "ratio_vs_hf_batch16": round(lanser["pairs_per_s"] / baseline["hf_batch16"]["pairs_per_s"], 2),
        "max_abs_prob_diff": float(np.abs(probs - ref).max()),
    }


# -- 4. End to end --------------------------------------------------------------------
def naive_end_to_end(clips, cfg, taxonomy, nli_model: str):
    from faster_whisper import WhisperModel, decode_audio

    from labeler.models.registry import resolve_model

    threads = os.cpu_count() or 1
    model = WhisperModel(resolve_model(cfg.asr.model), device="cpu", compute_type=cfg.asr.compute_type, cpu_threads=threads)
    zsc = _zero_shot(nli_model, threads)
    labels, template = taxonomy.label_names, _template(taxonomy)
    opts = dict(language=cfg.asr.language, beam_size=cfg.asr.beam_size, vad_filter=cfg.asr.vad_filter,
                condition_on_previous_text=cfg.asr.condition_on_previous_text)

    def one(path):
        audio = decode_audio(path, sampling_rate=SR)
        segments, _ = model.transcribe(audio, **opts)
        text = " ".join(s.text.strip() for s in segments).strip()
        label = None
        if text:
            out = zsc(text, candidate_labels=labels, hypothesis_template=template)
            label = out["labels"][0]
        return text, label

    one(clips[0].path)  # warm-up, excluded
    t0, c0 = time.perf_counter(), time.process_time()
    out = [one(c.path) for c in clips]
    return time.perf_counter() - t0, time.process_time() - c0, out


def pipeline_run(clips, cfg, workdir):
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.pipeline import run_labeling

    manifest = os.path.join(workdir, "manifest.parquet")
    pq.write_table(pa.table({"uri": [c.path for c in clips], "utt_id": [c.utt_id for c in clips]}), manifest)
    run_cfg = cfg.model_copy(update={"input": manifest, "output": os.path.join(workdir, "out")})
    t0 = time.perf_counter()
    result = run_labeling(run_cfg)
    wall = time.perf_counter() - t0
    # A clip longer than segment.min_source_s (one Asterisk prompt is 25 s) is cut into
    # utterances: its text is theirs joined in time order, and it has one label only when it
    # stayed one utterance.
    rows = duckdb.sql(
        f"SELECT source_id, string_agg(coalesce(text, ''), ' ' ORDER BY start_s), count(*), any_value(label) "
        f"FROM read_parquet('{workdir}/out/labels/**/*.parquet', hive_partitioning=true) GROUP BY source_id"
    ).fetchall()
    return wall, {r[0]: (r[1].strip(), r[3], r[2]) for r in rows}, result.manifest  # text, label, utterances


def relabel_run(cfg, workdir, taxonomy="iemocap4"):
    from labeler.pipeline import run_relabel

    t0 = time.perf_counter()
    result = run_relabel(cfg.model_copy(update={"output": os.path.join(workdir, "out"), "taxonomy": taxonomy}))
    return time.perf_counter() - t0, result.manifest


def main(argv=None) -> int:
    from faster_whisper import decode_audio

    from bench.models import deberta_v3_base_nli
    from bench.speech import asterisk_clips, wer
    from labeler.config import load_config
    from labeler.taxonomy import load_taxonomy

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="audio to label (real speech), seconds")
    p.add_argument("--config", default="bench/config.yaml", help="label config for both sides")
    p.add_argument("--json", default="bench/out/label_throughput.json", help="where to write the figures")
    p.add_argument("--skip-llm", action="store_true", help="leave out the vLLM scoring section")
    p.add_argument("--asr-repeat", type=int, default=3,
                   help="runs of both ASR sides, alternating; each side's figures are its median run's")
    args = p.parse_args(argv)

    nli_model = deberta_v3_base_nli()
    cfg = load_config(args.config, {"ray.progress": False, "scorer.model": nli_model})
    taxonomy = load_taxonomy(cfg.taxonomy)
    clips = asterisk_clips(args.seconds)
    audios = [decode_audio(c.path, sampling_rate=SR) for c in clips]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\nlanser benchmark: {len(clips)} Asterisk prompts, {sum(len(a) for a in audios) / SR:.1f} s of real speech; {machine}")

    res: dict = {"machine": machine, "clips": len(clips), "config": args.config,
                 "models": {"asr": f"{cfg.asr.model} ({cfg.asr.compute_type}, beam {cfg.asr.beam_size})", "nli": "DeBERTa-v3-base-sized"}}

    asr = bench_asr(clips, audios, cfg.asr, args.asr_repeat)
    transcripts = asr.pop("transcripts")
    res["asr"] = asr
    print(f"\n1. ASR, {cfg.asr.model} {cfg.asr.compute_type}            wall s   audio s / s   WER %")
    print(f"   naive loop (transcribe per clip)   {asr['naive']['wall_s']:>7.1f}   {asr['naive']['audio_s_per_s']:>11.2f}   {asr['naive']['wer_pct']:>5.2f}")
    print(f"   lanser ASR stage (packed windows)  {asr['lanser']['wall_s']:>7.1f}   {asr['lanser']['audio_s_per_s']:>11.2f}   {asr['lanser']['wer_pct']:>5.2f}")
    print(f"   ratio {asr['ratio']:.2f}x (goal >= 3x); WER {asr['wer_delta_points']:+.2f} points (goal <= +1.0); "
          f"{asr['lanser']['packed_clips']} clips packed in {asr['lanser']['packed_windows']} windows, "
          f"{asr['lanser']['failed_windows']} failed, {asr['lanser']['single_clips']} in one-clip windows, "
          f"{asr['lanser']['alone_clips']} decoded alone")
    for line in asr_detail_lines(asr):
        print(f"   {line}")

    ent = bench_entail(transcripts, taxonomy, cfg.scorer, cfg.abstain, nli_model)
    res["entail"] = ent
    print(f"\n2. Entailment, {ent['model']}: {ent['pairs']} pairs ({ent['transcripts']} transcripts x {ent['labels']} labels)")
    print(f"   HF zero-shot pipeline, default        {ent['hf_default']['pairs_per_s']:>7.2f} pairs/s")
    print(f"   HF zero-shot pipeline, batch_size=16  {ent['hf_batch16']['pairs_per_s']:>7.2f} pairs/s")
    print(f"   lanser nli stage                      {ent['lanser']['pairs_per_s']:>7.2f} pairs/s")
    print(f"   ratio {ent['ratio_vs_hf_default']:.2f}x the default pipeline, {ent['ratio_vs_hf_batch16']:.2f}x batch 16 (goal >= 3x); "
          f"largest probability difference {ent['max_abs_prob_diff']:.1e} (goal <= 1e-4)")

    if not args.skip_llm:
        try:
            import vllm  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - report why, keep the other sections
            res["llm"] = {"skipped": f"vLLM not importable: {exc}"}
            print(f"\n3. LLM scoring: skipped (vLLM not importable: {exc})")
        else:
            from bench.llm import report_lines, run_llm_bench

            res["llm"] = run_llm_bench([t for t in transcripts if t.strip()], taxonomy, nli_model)
            print("\n3. LLM scoring")
            for line in report_lines(res["llm"]):
                print(f"   {line}")

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="lanser-bench-")
    try:
        naive_s, naive_cpu, naive_out = naive_end_to_end(clips, cfg, taxonomy, nli_model)
        pipe_s, pipe_rows, manifest = pipeline_run(clips, cfg, work)
        relabel_s, relabel_manifest = relabel_run(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    audio_s = asr["audio_seconds"]
    refs = [c.reference for c in clips]
    whole = [(c, o) for c, o in zip(clips, naive_out) if pipe_rows[c.utt_id][2] == 1]
    agree = sum(pipe_rows[c.utt_id][1] == o[1] for c, o in whole) / max(len(whole), 1)
    res["end_to_end"] = {
        "naive": {"wall_s": round(naive_s, 2), "cpu_s": round(naive_cpu, 2), "audio_s_per_s": round(audio_s / naive_s, 2), "wer_pct": round(wer(refs, [o[0] for o in naive_out]), 2)},
        "lanser": {"wall_s": round(pipe_s, 2), "audio_s_per_s": round(audio_s / pipe_s, 2),
                   "wer_pct": round(wer(refs, [pipe_rows[c.utt_id][0] for c in clips]), 2),
                   "stage_busy_seconds": manifest["stage_busy_seconds"]},
        "ratio": round(naive_s / pipe_s, 2),
        "label_agreement": round(agree, 3),  # over the clips that stayed one utterance
        "clips_one_utterance": len(whole),
    }
    res["relabel"] = {"taxonomy": "iemocap4", "wall_s": round(relabel_s, 2), "share_of_first_run": round(relabel_s / pipe_s, 3),
                      "rows": relabel_manifest["counts"]["output_rows"], "cache": relabel_manifest["cache"]}
    e2e = res["end_to_end"]
    print("\n4. End to end (decode + ASR + entailment + tables)   wall s   audio s / s   WER %")
    print(f"   naive loop of both stages                 {e2e['naive']['wall_s']:>7.1f}   {e2e['naive']['audio_s_per_s']:>11.2f}   {e2e['naive']['wer_pct']:>5.2f}")
    print(f"   lanser labeling run (Ray Data)            {e2e['lanser']['wall_s']:>7.1f}   {e2e['lanser']['audio_s_per_s']:>11.2f}   {e2e['lanser']['wer_pct']:>5.2f}")
    print(f"   ratio {e2e['ratio']:.2f}x; same label on {agree:.0%} of the {len(whole)} clips that stay one utterance; stage busy seconds {e2e['lanser']['stage_busy_seconds']}")
    print(f"   relabel with a new taxonomy (iemocap4), no audio, no ASR: {relabel_s:.1f} s = {relabel_s / pipe_s:.1%} of the first run; "
          f"{relabel_manifest['cache'].get('n_pairs_scored', 0)} pairs scored, {relabel_manifest['cache'].get('n_pairs_cached', 0)} from cache")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
