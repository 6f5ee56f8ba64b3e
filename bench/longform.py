"""Long-form labeling on real speech: lanser's segmenting pipeline against the naive loop.

    .venv/bin/python -m bench.longform [--recordings 3] [--minutes 3.5] [--seed 0]

Recordings of a few minutes each are built from Debian's Asterisk prompts (one real human
voice, 8 kHz, resampled to 16 kHz; single-sentence prompts of 2.5-8 s with a reference text),
concatenated in a seeded random order with seeded pauses of 0.6-2.0 s (and 1 s of silence at
both ends), so every prompt's true start, end and text in the recording are known. Prompts
do not repeat within a recording until the pool is used up; they do across recordings (the
pool holds about 6 minutes of speech).

Both sides get the same files, in the same process run, with empty caches:

- **lanser**: the real labeling run (``labeler/configs/demo.yaml``: Whisper tiny.en int8, beam
  5, the embedding scorer; a local Ray). Files longer than ``segment.min_source_s`` are cut by
  Silero VAD into speech regions, transcribed in packed 30-s windows with word timestamps,
  and rebuilt into utterances (one labels row each). Its wall time is timed around the whole
  run and includes starting Ray, the actors and loading the models; the like-for-like
  figure is the busy time of the decode (read, decode, VAD) and ASR stages, as the run
  manifest reports it (``stage_busy_seconds``; the ASR actor's lazy model load is in its first
  batch, so this side still carries one model load).
- **naive loop**: faster-whisper ``WhisperModel.transcribe`` on each whole file (the file path:
  decoding included), the same model, compute type, threads, language, beam,
  ``vad_filter=True`` with the config's ``vad_min_silence_ms``, and
  ``condition_on_previous_text``; one row per file. The model is loaded and warmed up on one
  prompt before the clock starts. It runs once before the lanser run and once after, and its
  wall time is the mean of the two: on a shared machine the load drifts during the bench (the
  1-minute load average after each part is printed and stored).

Reported: audio seconds per wall second; the number of utterances against the number of
prompts (how many utterances hold one prompt, several, or only part of one, and how many
prompts are split or missed; the utterances whose boundaries match no prompt's are listed
per recording in the JSON); segment-boundary precision and recall against the prompts' true boundaries
(an utterance start within ``--tolerance`` (0.5 s) of a prompt start, or an end of an end,
matched one to one; precision over the predicted boundaries, recall over the true ones);
the same for the segments Whisper itself returns in the naive loop, for reference; and WER
(Whisper's English normalizer) of each recording's utterance texts in time order, joined,
against its joined references. The figures go to ``bench/out/longform.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass

from bench.speech import Prompt, asterisk_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SR = 16_000
PROMPT_MIN_S, PROMPT_MAX_S = 2.5, 8.0  # single-sentence prompts, as the segmentation tests use
PAUSE_MIN_S, PAUSE_MAX_S = 0.6, 2.0
LEAD_S = 1.0


@dataclass(frozen=True)
class Recording:
    source_id: str
    path: str
    duration_s: float
    truth: tuple[tuple[float, float, str], ...]  # each prompt's (start_s, end_s, reference) in the file

    @property
    def reference(self) -> str:
        return " ".join(t for _, _, t in self.truth)


# -- recordings ------------------------------------------------------------------------
def _resample(x, src: int, dst: int):
    import numpy as np

    n = int(round(len(x) * dst / src))
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)


def _load_prompt(path: str):
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32")
    return _resample(x if x.ndim == 1 else x.mean(axis=1), sr, SR)


def build_recordings(pool: list[Prompt], n: int, minutes: float, seed: int, out_dir: str) -> list[Recording]:
    """``n`` recordings of at least ``minutes`` each (the last prompt may overrun it), written
    as 16-kHz WAV files under ``out_dir``; the same seed gives the same files."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    cache: dict[str, np.ndarray] = {}
    recs = []
    for k in range(n):
        order: list[int] = []
        prompts: list[Prompt] = []
        total = 2 * LEAD_S
        while total < minutes * 60:
            if not order:  # a fresh permutation of the pool; no prompt twice in a row
                order = [int(i) for i in rng.permutation(len(pool))]
                if prompts and len(order) > 1 and pool[order[0]] == prompts[-1]:
                    order.append(order.pop(0))
            p = pool[order.pop(0)]  # repeats in a recording only once the whole pool is used
            prompts.append(p)
            total += p.duration_s + (PAUSE_MAX_S + PAUSE_MIN_S) / 2
        pauses = rng.uniform(PAUSE_MIN_S, PAUSE_MAX_S, size=len(prompts))
        pieces = [np.zeros(int(LEAD_S * SR), np.float32)]
        truth, t = [], int(LEAD_S * SR)
        for j, p in enumerate(prompts):
            x = cache.get(p.path)
            if x is None:
                x = cache[p.path] = _load_prompt(p.path)
            pieces.append(x)
            truth.append((t / SR, (t + len(x)) / SR, p.text))
            t += len(x)
            gap = int(round((pauses[j] if j + 1 < len(prompts) else LEAD_S) * SR))
            pieces.append(np.zeros(gap, np.float32))
            t += gap
        wave = np.concatenate(pieces)
        sid = f"longform-{seed}-{k:02d}"
        path = os.path.join(out_dir, f"{sid}.wav")
        sf.write(path, wave, SR, subtype="PCM_16")
        recs.append(Recording(sid, path, len(wave) / SR, tuple(truth)))
    return recs


# -- scoring ---------------------------------------------------------------------------
def _match(pred: list[float], true: list[float], tol: float) -> int:
    """Pairs of points within ``tol`` of each other, matched one to one (closest first)."""
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(pred) for j, t in enumerate(true) if abs(p - t) <= tol)
    used_p, used_t, n = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            n += 1
    return n


def boundary_counts(spans: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float) -> dict:
    """Matched starts and ends: true positives, predicted and true boundary counts."""
    tp = _match([s for s, _ in spans], [s for s, _ in truth], tol) + _match([e for _, e in spans], [e for _, e in truth], tol)
    return {"matched": tp, "predicted": 2 * len(spans), "true": 2 * len(truth)}


def _pr(c: dict) -> dict:
    p = c["matched"] / c["predicted"] if c["predicted"] else 0.0
    r = c["matched"] / c["true"] if c["true"] else 0.0
    return {**c, "precision": round(p, 3), "recall": round(r, 3)}


def misfits(utts: list[dict], truth: list[tuple[float, float, str]], tol: float) -> list[dict]:
    """The utterances with a start or end farther than ``tol`` from every true start or end:
    their span, text, and the signed distance of each end to the nearest true one."""
    starts, ends = [s for s, _, _ in truth], [e for _, e, _ in truth]
    out = []
    for u in utts:
        ds = min((u["start_s"] - t for t in starts), key=abs)
        de = min((u["end_s"] - t for t in ends), key=abs)
        if abs(ds) > tol or abs(de) > tol:
            out.append({"start_s": u["start_s"], "end_s": u["end_s"], "text": u["text"],
                        "start_off_s": _r(ds, 3), "end_off_s": _r(de, 3),
                        "overlapped_prompts": [[_r(s, 3), _r(e, 3), t] for s, e, t in truth if min(e, u["end_s"]) > max(s, u["start_s"])]})
    return out


def offsets(utts: list[dict], truth: list[tuple[float, float, str]], tol: float) -> dict:
    """Median signed distance (predicted - true) of the starts and ends within ``tol``."""
    import numpy as np

    out = {}
    for key, ref in (("start", [s for s, _, _ in truth]), ("end", [e for _, e, _ in truth])):
        d = [min((u[f"{key}_s"] - t for t in ref), key=abs) for u in utts]
        d = [x for x in d if abs(x) <= tol]
        out[f"{key}_median_s"] = _r(float(np.median(d)), 3) if d else None
    return out


def structure(spans: list[tuple[float, float]], truth: list[tuple[float, float]]) -> dict:
    """How utterances cover prompts: an utterance holds a prompt when it covers at least half
    of it (else it is part of one, or outside all of them); a prompt is split when two or more
    utterances each cover a quarter of it or more."""

    def ov(a, b):
        return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))

    holds = [[j for j, t in enumerate(truth) if ov(u, t) >= 0.5 * (t[1] - t[0])] for u in spans]
    touches = [any(ov(u, t) > 0 for t in truth) for u in spans]
    out = {"one_prompt": sum(len(h) == 1 for h in holds), "several_prompts": sum(len(h) > 1 for h in holds),
           "part_of_a_prompt": sum(not h and x for h, x in zip(holds, touches)), "outside_prompts": sum(not x for x in touches)}
    covered = [sum(ov(u, t) >= 0.25 * (t[1] - t[0]) for u in spans) for t in truth]
    out["prompts_split"] = sum(c > 1 for c in covered)
    out["prompts_missed"] = sum(not any(ov(u, t) > 0 for u in spans) for t in truth)
    return out


# -- the two sides ---------------------------------------------------------------------
class NaiveLoop:
    """faster-whisper ``transcribe`` on each whole file; the model is loaded and warmed up
    (on one prompt) here, before any clock starts."""

    def __init__(self, asr_cfg, warmup_path: str) -> None:
        from faster_whisper import WhisperModel

        from labeler.models.registry import resolve_model

        t0 = time.perf_counter()
        self.model = WhisperModel(resolve_model(asr_cfg.model), device="cpu", compute_type=asr_cfg.compute_type,
                                  cpu_threads=os.cpu_count() or 1)
        self.load_s = time.perf_counter() - t0
        self.opts = dict(language=asr_cfg.language, beam_size=asr_cfg.beam_size, vad_filter=True,
                         vad_parameters={"min_silence_duration_ms": asr_cfg.vad_min_silence_ms},
                         condition_on_previous_text=asr_cfg.condition_on_previous_text)
        self._one(warmup_path)

    def _one(self, path: str):
        segments, _ = self.model.transcribe(path, **self.opts)
        segs = [(float(s.start), float(s.end), s.text.strip()) for s in segments]
        return " ".join(t for _, _, t in segs).strip(), segs

    def __call__(self, recs: list[Recording]) -> dict:
        t0 = time.perf_counter()
        out = [self._one(r.path) for r in recs]
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "texts": [o[0] for o in out], "segments": [o[1] for o in out], "load_avg_after": _load()}


def pipeline(recs: list[Recording], cfg, workdir: str) -> dict:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from labeler.pipeline import run_labeling
    from labeler.runs import forwarded_runtime_env

    manifest = os.path.join(workdir, "manifest.parquet")
    pq.write_table(pa.table({"uri": [r.path for r in recs], "utt_id": [r.source_id for r in recs]}), manifest)
    run_cfg = cfg.model_copy(update={"input": manifest, "output": os.path.join(workdir, "out")})
    t0 = time.perf_counter()
    try:
        # what labeler.runs.init_ray does for a local Ray, with the workers' logs kept off the console
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=forwarded_runtime_env(), log_to_driver=False)
        result = run_labeling(run_cfg)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    m = result.manifest
    labels = m["tables"]["labels"]
    rows = duckdb.sql(
        f"SELECT source_id, segment_index, start_s, end_s, coalesce(text, '') AS text, status, error "
        f"FROM read_parquet('{labels}/**/*.parquet', hive_partitioning=false) ORDER BY source_id, start_s"
    ).fetchall()
    by_source: dict[str, list] = {r.source_id: [] for r in recs}
    for sid, idx, s, e, text, status, err in rows:
        by_source[sid].append({"segment_index": idx, "start_s": s, "end_s": e, "text": text, "status": status, "error": err})
    return {"wall_s": wall, "manifest": m, "rows": by_source, "load_avg_after": _load()}


# -- main ------------------------------------------------------------------------------
def _r(x: float, n: int = 2) -> float:
    return round(float(x), n)


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv=None) -> int:
    from bench.llm import _LoadSampler
    from bench.speech import wer
    from labeler.config import load_config

    p = argparse.ArgumentParser(prog="python -m bench.longform", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recordings", type=int, default=3, help="recordings to build")
    p.add_argument("--minutes", type=float, default=3.5, help="length of each recording, minutes (at least; the last prompt may overrun)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt order and the pauses")
    p.add_argument("--tolerance", type=float, default=0.5, help="a boundary within this many seconds of a true one counts")
    p.add_argument("--config", default="labeler/configs/demo.yaml", help="label config (the naive loop takes its asr settings)")
    p.add_argument("--json", default="bench/out/longform.json", help="where to write the figures")
    args = p.parse_args(argv)

    cfg = load_config(args.config, {"ray.progress": False})
    pool = asterisk_prompts(PROMPT_MIN_S, PROMPT_MAX_S)
    work = tempfile.mkdtemp(prefix="lanser-longform-")
    load = _LoadSampler()
    t_start = time.perf_counter()
    try:
        audio_dir = os.path.join(work, "audio")
        os.makedirs(audio_dir)
        recs = build_recordings(pool, args.recordings, args.minutes, args.seed, audio_dir)
        audio_s = sum(r.duration_s for r in recs)
        n_prompts = sum(len(r.truth) for r in recs)
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        print(f"\nlanser long-form benchmark: {len(recs)} recordings, {audio_s:.1f} s ({audio_s / 60:.1f} min) of real speech; "
              f"{n_prompts} Asterisk prompts ({len(pool)} in the pool), pauses {PAUSE_MIN_S}-{PAUSE_MAX_S} s, seed {args.seed}; {machine}")

        loop = NaiveLoop(cfg.asr, pool[0].path)
        naive = loop(recs)  # the naive loop runs before and after the pipeline: on a shared
        pipe = pipeline(recs, cfg, work)  # machine, the load drifts; its mean wall is the baseline
        naive_again = loop(recs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - t_start
    load_avg = load.stop()

    m = pipe["manifest"]
    busy = m.get("stage_busy_seconds", {})
    asr_busy = busy.get("asr", 0.0) + busy.get("decode", 0.0)
    counters = m.get("stage_counters", {})
    asr_c = {k: v for k, v in counters.get("asr", {}).items() if k != "busy_seconds"}
    dec_c = counters.get("decode", {})
    tol = args.tolerance

    per_rec, lan_hyp, naive_hyp, refs = [], [], [], []
    lan_b = {"matched": 0, "predicted": 0, "true": 0}
    seg_b = dict(lan_b)
    shape: dict[str, int] = {}
    n_utts = n_segs = 0
    statuses: dict[str, int] = {}
    errors: list[str] = []
    for r, naive_text, naive_segs in zip(recs, naive["texts"], naive["segments"]):
        rows = pipe["rows"][r.source_id]
        utts = [x for x in rows if x["segment_index"] is not None]
        for x in rows:
            statuses[x["status"]] = statuses.get(x["status"], 0) + 1
            if x["error"]:
                errors.append(f"{r.source_id}: {x['error']}")
        spans = [(x["start_s"], x["end_s"]) for x in utts]
        truth = [(s, e) for s, e, _ in r.truth]
        text = " ".join(x["text"].strip() for x in rows if x["text"].strip())
        b = boundary_counts(spans, truth, tol)
        sb = boundary_counts([(s, e) for s, e, _ in naive_segs], truth, tol)
        st = structure(spans, truth)
        for k in lan_b:
            lan_b[k] += b[k]
            seg_b[k] += sb[k]
        for k, v in st.items():
            shape[k] = shape.get(k, 0) + v
        n_utts += len(utts)
        n_segs += len(naive_segs)
        refs.append(r.reference)
        lan_hyp.append(text)
        naive_hyp.append(naive_text)
        per_rec.append({
            "source_id": r.source_id, "duration_s": _r(r.duration_s, 1), "prompts": len(r.truth), "utterances": len(utts),
            "whisper_segments": len(naive_segs), "boundaries": _pr(b), "whisper_segment_boundaries": _pr(sb), "structure": st,
            "wer_pct": {"lanser": _r(wer([r.reference], [text])), "naive": _r(wer([r.reference], [naive_text]))},
            "boundary_offsets": offsets(utts, list(r.truth), tol),
            "misfit_utterances": misfits(utts, list(r.truth), tol),
            "missed_prompts": [t for (s, e, t) in r.truth if not any(min(e, ue) > max(s, us) for us, ue in spans)],
        })

    lan_wer, naive_wer = wer(refs, lan_hyp), wer(refs, naive_hyp)
    naive_walls = [naive["wall_s"], naive_again["wall_s"]]
    naive_wall = sum(naive_walls) / 2
    naive_tp = audio_s / naive_wall
    busy_tp = audio_s / asr_busy if asr_busy else float("nan")
    wall_tp = audio_s / pipe["wall_s"]
    lb, sb = _pr(lan_b), _pr(seg_b)
    dropped = {k[len("dropped_"):]: v for k, v in asr_c.items() if k.startswith("dropped_")}
    res = {
        "machine": machine,
        "config": args.config,
        "model": f"{cfg.asr.model} ({cfg.asr.compute_type}, beam {cfg.asr.beam_size})",
        "scorer": f"{cfg.scorer.backend}:{cfg.scorer.model}",
        "seed": args.seed, "recordings": len(recs), "minutes_each": args.minutes,
        "audio_seconds": _r(audio_s, 1), "prompts": n_prompts, "prompt_pool": len(pool),
        "prompt_length_s": [PROMPT_MIN_S, PROMPT_MAX_S], "pause_s": [PAUSE_MIN_S, PAUSE_MAX_S], "tolerance_s": tol,
        "naive": {"wall_s": _r(naive_wall), "walls_s_before_after": [_r(w) for w in naive_walls],
                  "audio_s_per_s": _r(naive_tp), "wer_pct": _r(naive_wer),
                  "same_text_both_runs": naive["texts"] == naive_again["texts"],
                  "load_avg_after": [naive["load_avg_after"], naive_again["load_avg_after"]],
                  "rows": len(recs), "model_load_s": _r(loop.load_s),
                  "whisper_segments": n_segs, "whisper_segment_boundaries": sb},
        "lanser": {
            "wall_s": _r(pipe["wall_s"]), "audio_s_per_s": _r(wall_tp),
            "asr_busy_s": _r(asr_busy), "asr_busy_audio_s_per_s": _r(busy_tp), "wer_pct": _r(lan_wer),
            "utterances": n_utts, "rows": sum(statuses.values()), "status": statuses, "errors": errors[:5],
            "boundaries": lb, "structure": shape, "dropped": dropped,
            "manifest_wall_s": m.get("wall_seconds"), "load_avg_after": pipe["load_avg_after"], "stage_busy_seconds": busy,
            "asr_counters": asr_c,
            "decode_counters": {k: v for k, v in dec_c.items() if k in ("sources_segmented", "speech_regions", "speech_region_seconds")},
        },
        "ratio_asr_busy_vs_naive": _r(busy_tp / naive_tp),
        "ratio_wall_vs_naive_wall": _r(pipe["wall_s"] / naive_wall),
        "wer_delta_points": _r(lan_wer - naive_wer),
        "per_recording": per_rec,
        "bench_wall_s": _r(total_s, 1),
        "load_avg_1min": load_avg,
    }

    na, la = res["naive"], res["lanser"]
    print(f"\n{'':44}wall s   audio s / s   WER %   rows   boundary P / R (+-{tol:g} s)")
    print(f"  naive loop (transcribe per file)       {na['wall_s']:>7.1f}   {na['audio_s_per_s']:>11.2f}   {na['wer_pct']:>5.2f}   "
          f"{len(recs):>4}        -")
    print(f"    its Whisper segments, for reference  {'':>7}   {'':>11}   {'':>5}   {n_segs:>4}   {sb['precision']:.3f} / {sb['recall']:.3f}")
    print(f"  lanser run, whole (Ray, models incl.)  {la['wall_s']:>7.1f}   {la['audio_s_per_s']:>11.2f}   {la['wer_pct']:>5.2f}   "
          f"{n_utts:>4}   {lb['precision']:.3f} / {lb['recall']:.3f}")
    print(f"  lanser decode+VAD+ASR stages, busy     {la['asr_busy_s']:>7.1f}   {la['asr_busy_audio_s_per_s']:>11.2f}")
    print(f"  naive wall is the mean of a run before ({naive_walls[0]:.1f} s) and after ({naive_walls[1]:.1f} s) the lanser run; "
          f"1-min load average after naive, lanser, naive: {na['load_avg_after'][0]}, {la['load_avg_after']}, {na['load_avg_after'][1]}")
    print(f"  ratio (like for like) ASR-stage busy throughput / naive: {res['ratio_asr_busy_vs_naive']:.2f}x; "
          f"whole-run wall / naive wall: {res['ratio_wall_vs_naive_wall']:.2f} (Ray start, actors, model loads included); "
          f"WER {res['wer_delta_points']:+.2f} points")
    print(f"  utterances {n_utts} for {n_prompts} prompts: {shape['one_prompt']} hold one prompt, {shape['several_prompts']} several, "
          f"{shape['part_of_a_prompt']} part of one, {shape['outside_prompts']} outside all; {shape['prompts_split']} prompts split, {shape['prompts_missed']} missed; "
          f"boundaries {lb['matched']} matched of {lb['predicted']} predicted, {lb['true']} true")
    print(f"  asr: {asr_c.get('packed_clips', 0)} speech regions packed in {asr_c.get('packed_windows', 0)} windows, "
          f"{asr_c.get('failed_windows', 0)} failed, {asr_c.get('single_clips', 0)} in one-clip windows, "
          f"{asr_c.get('alone_clips', 0)} alone; dropped {dropped or 'none'}; "
          f"stage busy s {busy}")
    if errors:
        print(f"  errors: {errors[:3]}")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nfigures written to {args.json} ({total_s:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
