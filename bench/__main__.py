"""Labeling throughput on real speech: lanser's Ray Data pipeline against a naive loop.

    make bench            # or: .venv/bin/python -m bench [--seconds 300]

Both sides use the same models (the packaged Whisper tiny.en int8 and the packaged
all-MiniLM-L6-v2 scorer, as in the offline demo), the same clips and settings. The naive
loop is what a notebook does: per clip, faster-whisper ``transcribe`` and then scoring,
one clip at a time, in one process, models loaded once and a warm-up clip excluded. The
pipeline is timed end to end as a user runs it (Ray startup excluded, actor start and
model loading included), with an empty output root.

Then a relabel of the same corpus with a new taxonomy (iemocap4) from the stored
transcripts, timed the same way, against the first labeling run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def naive_loop(clips, cfg, taxonomy):
    from faster_whisper import WhisperModel, decode_audio

    from labeler.models.registry import resolve_model
    from labeler.models.scorers import make_scorer

    model = WhisperModel(resolve_model(cfg.asr.model), device="cpu", compute_type=cfg.asr.compute_type, cpu_threads=os.cpu_count() or 1)
    scorer = make_scorer(cfg.scorer.model_copy(update={"torch_threads": os.cpu_count() or 1}))
    opts = dict(language=cfg.asr.language, beam_size=cfg.asr.beam_size, vad_filter=cfg.asr.vad_filter,
                condition_on_previous_text=cfg.asr.condition_on_previous_text)

    def one(path):
        audio = decode_audio(path, sampling_rate=16000)
        segments, _ = model.transcribe(audio, **opts)
        text = " ".join(s.text.strip() for s in segments).strip()
        label = None
        if text:
            res = scorer.score([text], taxonomy.hypotheses)
            label = taxonomy.label_names[int(res.probs[0].argmax())]
        return text, label, len(audio) / 16000

    one(clips[0].path)  # warm-up, excluded
    t0 = time.perf_counter()
    out = [one(c.path) for c in clips]
    return time.perf_counter() - t0, out


def pipeline_run(clips, cfg, workdir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.pipeline import run_labeling

    manifest = os.path.join(workdir, "manifest.parquet")
    pq.write_table(pa.table({"uri": [c.path for c in clips], "utt_id": [c.utt_id for c in clips]}), manifest)
    run_cfg = cfg.model_copy(update={"input": manifest, "output": os.path.join(workdir, "out")})
    t0 = time.perf_counter()
    result = run_labeling(run_cfg)
    wall = time.perf_counter() - t0
    import duckdb

    rows = duckdb.sql(
        f"SELECT utt_id, text, label FROM read_parquet('{workdir}/out/labels/**/*.parquet', hive_partitioning=true)"
    ).fetchall()
    return wall, {r[0]: (r[1] or "", r[2]) for r in rows}, result.manifest


def relabel_run(cfg, workdir, taxonomy="iemocap4"):
    from labeler.pipeline import run_relabel

    t0 = time.perf_counter()
    result = run_relabel(cfg.model_copy(update={"output": os.path.join(workdir, "out"), "taxonomy": taxonomy}))
    return time.perf_counter() - t0, result.manifest


def main(argv=None) -> int:
    import ray

    from bench.speech import asterisk_clips, wer
    from labeler.config import load_config
    from labeler.taxonomy import load_taxonomy

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="audio to label (real speech), seconds")
    p.add_argument("--config", default="labeler/configs/demo.yaml", help="label config for both sides")
    p.add_argument("--json", default="bench/out/label_throughput.json", help="where to write the figures")
    args = p.parse_args(argv)

    cfg = load_config(args.config, {"ray.progress": False})
    taxonomy = load_taxonomy(cfg.taxonomy)
    clips = asterisk_clips(args.seconds)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="lanser-bench-")
    try:
        naive_s, naive_out = naive_loop(clips, cfg, taxonomy)
        pipe_s, pipe_rows, manifest = pipeline_run(clips, cfg, work)
        relabel_s, relabel_manifest = relabel_run(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    audio_s = sum(o[2] for o in naive_out)
    refs = [c.reference for c in clips]
    naive_wer = wer(refs, [o[0] for o in naive_out])
    pipe_wer = wer(refs, [pipe_rows[c.utt_id][0] for c in clips])
    agree = sum(pipe_rows[c.utt_id][1] == o[1] for c, o in zip(clips, naive_out)) / len(clips)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "clips": len(clips), "audio_seconds": round(audio_s, 1),
        "models": {"asr": cfg.asr.model, "compute_type": cfg.asr.compute_type, "scorer": f"{cfg.scorer.backend}:{cfg.scorer.model}"},
        "naive": {"wall_s": round(naive_s, 2), "audio_s_per_s": round(audio_s / naive_s, 2), "wer_pct": round(naive_wer, 2)},
        "pipeline": {"wall_s": round(pipe_s, 2), "audio_s_per_s": round(audio_s / pipe_s, 2), "wer_pct": round(pipe_wer, 2),
                     "stage_busy_seconds": manifest["stage_busy_seconds"]},
        "ratio_pipeline_over_naive": round(naive_s / pipe_s, 3),
        "label_agreement": round(agree, 3),
        "relabel": {"taxonomy": "iemocap4", "wall_s": round(relabel_s, 2), "share_of_first_run": round(relabel_s / pipe_s, 3),
                    "rows": relabel_manifest["counts"]["output_rows"], "cache": relabel_manifest["cache"]},
    }
    print(f"\nlanser labeling benchmark: {res['clips']} Asterisk prompts, {res['audio_seconds']} s of real speech; {res['machine']}")
    print(f"models: {res['models']['asr']} ({res['models']['compute_type']}), {res['models']['scorer']}")
    print(f"  {'':<22}{'wall s':>8}{'audio s / s':>13}{'WER %':>8}")
    print(f"  {'naive loop':<22}{naive_s:>8.1f}{audio_s / naive_s:>13.2f}{naive_wer:>8.2f}")
    print(f"  {'lanser pipeline':<22}{pipe_s:>8.1f}{audio_s / pipe_s:>13.2f}{pipe_wer:>8.2f}")
    print(f"  ratio (pipeline / naive throughput): {res['ratio_pipeline_over_naive']:.2f}x; same label on {agree:.0%} of clips")
    print(f"  relabel with a new taxonomy (iemocap4), no audio, no ASR: {relabel_s:.1f} s wall = "
          f"{relabel_s / pipe_s:.1%} of the first labeling run ({pipe_s:.1f} s); "
          f"{relabel_manifest['cache'].get('n_pairs_scored', 0)} pairs scored, {relabel_manifest['cache'].get('n_pairs_cached', 0)} from cache")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"figures written to {args.json}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
