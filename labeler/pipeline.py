"""The labeling pipeline on Ray Data: read -> decode (tasks) -> ASR (actors) -> entailment
(actors) -> Parquet (staged, then committed all at once).

    >>> from labeler import LabelConfig, run_labeling                      # doctest: +SKIP
    >>> cfg = LabelConfig(input="clips/", output="out/", taxonomy="ekman")  # doctest: +SKIP
    >>> result = run_labeling(cfg)                                          # doctest: +SKIP
    >>> result.manifest["counts"]["status"]                                 # doctest: +SKIP
    {'labeled': 6, 'abstained': 1}
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa

from labeler.config import LabelConfig
from labeler.errors import LanserError
from labeler.io import redact


@dataclass
class RunResult:
    run_id: str
    manifest: dict[str, Any]
    output: str

    @property
    def labels_path(self) -> str:
        return self.manifest["tables"]["labels"]


def new_run_id() -> str:
    """Time-sortable and unique: ``20261124T231900Z-3f9a1c2e``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def init_ray(cfg: LabelConfig) -> None:
    """Connect to ``ray.address`` / ``RAY_ADDRESS``, else start a local Ray. Sets Ray Data's
    context once, here in the entry point."""
    import ray

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        env = forwarded_runtime_env()
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=env)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = False


FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")


def forwarded_runtime_env() -> Optional[dict[str, Any]]:
    """The driver's model-hub settings, passed on to every worker on every node. Inside a
    Ray Job (``ray job submit``) the variables its runtime env already sets are left out:
    Ray refuses to start a driver whose ``ray.init`` names an env var the Job also names."""
    import json

    keys = [k for k in FORWARDED_ENV if k in os.environ]
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        taken = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        keys = [k for k in keys if k not in taken]
    return {"env_vars": {k: os.environ[k] for k in keys}} if keys else None


def _decode_batch(batch: pa.Table, max_duration_s: float, transcript_cache=None) -> pa.Table:
    from labeler.stages.decode import DecodeStage

    return DecodeStage(max_duration_s, transcript_cache)(batch)


def _actor_args(num_cpus: float, num_gpus: float, concurrency, retry) -> dict[str, Any]:
    import ray

    if isinstance(concurrency, tuple):
        pool = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ray.data.ActorPoolStrategy(size=concurrency)
    # On purpose: an actor whose process dies is restarted and its calls retried; an
    # exception raised by our code is not retried (per-row problems are already data).
    args: dict[str, Any] = {"num_cpus": num_cpus, "compute": pool,
                            "max_restarts": retry.max_actor_restarts, "max_task_retries": retry.max_task_retries}
    if num_gpus:
        args["num_gpus"] = num_gpus
    return args


def _chunks(table: pa.Table, step: int) -> list[pa.Table]:
    return [table.slice(i, step) for i in range(0, table.num_rows, step)]


def add_entail_stage(ds, cfg: LabelConfig, taxonomy, score_cache_ref):
    from labeler.stages.entail import EntailStage

    args = _actor_args(cfg.scorer.num_cpus, cfg.scorer.num_gpus, cfg.scorer.concurrency, cfg.retry)
    if cfg.scorer.engine == "vllm":
        from labeler.models.llm import ENGINE_ENV

        args["runtime_env"] = {"env_vars": {k: os.environ.get(k, v) for k, v in ENGINE_ENV.items()}}
    return ds.map_batches(
        EntailStage,
        fn_constructor_args=(cfg.scorer, cfg.abstain, taxonomy, score_cache_ref, cfg.cache.memo_pairs),
        batch_format="pyarrow",
        batch_size=cfg.scorer.batch_size,
        **args,
    )


def build_dataset(cfg: LabelConfig, inputs: pa.Table, taxonomy, transcript_cache_ref=None, score_cache_ref=None):
    """The lazy Ray Dataset of a labeling run: one output row per input row."""
    import ray

    from labeler.stages.asr import ASRStage

    ds = ray.data.from_arrow(_chunks(inputs, cfg.decode.rows_per_block))
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={"max_duration_s": cfg.decode.max_duration_s, "transcript_cache": transcript_cache_ref},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=cfg.decode.num_cpus,
        max_retries=cfg.retry.max_task_retries,
        retry_exceptions=False,
    )
    ds = ds.map_batches(
        ASRStage,
        fn_constructor_args=(cfg.asr,),
        batch_format="pyarrow",
        batch_size=cfg.asr.batch_size,
        **_actor_args(cfg.asr.num_cpus, cfg.asr.num_gpus, cfg.asr.concurrency, cfg.retry),
    )
    return add_entail_stage(ds, cfg, taxonomy, score_cache_ref)


def _score_cache_ref(cfg: LabelConfig, taxonomy):
    import ray

    from labeler.cache import ScoreCache

    if not cfg.cache.scores:
        return None, 0
    cache = ScoreCache.load(cfg.output, cfg.scorer.key_hash(), taxonomy.hypotheses)
    return (ray.put(cache) if len(cache) else None), len(cache)


def _execute(ds, cfg: LabelConfig, run_id: str, taxonomy) -> tuple[dict[str, Any], float]:
    """Stream ``ds`` into the run's staging folder; returns this attempt's stats and wall time."""
    from labeler.table import RunSink

    t0 = time.perf_counter()
    sink = RunSink(cfg.output, run_id, secrets.token_hex(3), cfg.out.rows_per_file, taxonomy.hypotheses,
                   cfg.scorer.key_hash(), cfg.out.compression)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": cfg.out.write_num_cpus, "max_retries": cfg.retry.max_task_retries})
    except Exception as exc:
        cause = find_lanser_error(exc)
        if cause is not None:
            raise cause from None
        raise
    return sink.stats or {"rows": 0}, time.perf_counter() - t0


def _remaining(inputs: pa.Table, root: str, run_id: str) -> tuple[pa.Table, int]:
    """Input rows not yet in the staged parts of ``run_id`` (a resumed run skips them)."""
    import pyarrow.compute as pc

    from labeler.table import read_staged_labels

    done = read_staged_labels(root, run_id, ["utt_id"]).column("utt_id")
    if len(done) == 0:
        return inputs, 0
    keep = pc.invert(pc.is_in(inputs.column("utt_id"), value_set=done.combine_chunks()))
    return inputs.filter(keep), len(done)


def _manifest(cfg: LabelConfig, run_id: str, kind: str, taxonomy, inputs: pa.Table, stats: dict[str, Any],
              wall: float, started: float, resumed_rows: int, extra: dict[str, Any]) -> dict[str, Any]:
    audio = stats.get("audio_seconds", 0.0)
    return {
        "run_id": run_id,
        "kind": kind,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "wall_seconds": round(wall, 3),
        "input": redact(cfg.input) if cfg.input else None,
        "output": redact(cfg.output),
        "taxonomy": taxonomy.to_dict(),
        "models": {"asr": cfg.asr.model, "asr_config_hash": cfg.asr.config_hash(),
                   "scorer": f"{cfg.scorer.backend}:{cfg.scorer.model}", "scorer_key": cfg.scorer.key_hash()},
        "config": redact_config(cfg),
        "counts": {"input_rows": inputs.num_rows, "resumed_rows": resumed_rows, "processed_rows": stats.get("rows", 0)},
        "cache": stats.get("cache", {}),
        "throughput_audio_s_per_s": round(audio / wall, 3) if wall > 0 and audio else None,
        "stage_busy_seconds": {k.removeprefix("t_"): round(v, 3) for k, v in stats.get("stage_seconds", {}).items()},
        "files": [{"table": t, "file": f, "rows": r} for t, f, r in stats.get("files", [])],
        "errors_sample": stats.get("errors_sample", []),
        **extra,
    }


def run_labeling(cfg: LabelConfig) -> RunResult:
    """Label ``cfg.input`` into ``cfg.output``; returns the committed run's manifest.

    Re-running the same configuration after a crash resumes the unfinished run; audio
    already transcribed with the same ASR settings is not transcribed again.
    """
    import ray

    from labeler.cache import TranscriptCache
    from labeler.runs import claim_run
    from labeler.sources import resolve_input
    from labeler.table import commit, read_manifest
    from labeler.taxonomy import load_taxonomy

    cfg.require_io()
    taxonomy = load_taxonomy(cfg.taxonomy)
    if cfg.run_id:
        existing = read_manifest(cfg.output, cfg.run_id)
        if existing and existing.get("status") == "committed":
            return RunResult(cfg.run_id, existing, cfg.output)  # idempotent: already done
    inputs = resolve_input(cfg.input)
    init_ray(cfg)
    started = time.time()
    run_id, lock, _ = claim_run(cfg.output, cfg.run_key(taxonomy), "label", cfg.run_id, new_run_id)
    try:
        todo, resumed_rows = _remaining(inputs, cfg.output, run_id)
        tcache = TranscriptCache.load(cfg.output, cfg.asr.config_hash()) if cfg.cache.transcripts else TranscriptCache.empty("")
        score_ref, n_scores = _score_cache_ref(cfg, taxonomy)
        stats, wall = {"rows": 0}, 0.0
        if todo.num_rows:
            ds = build_dataset(cfg, todo, taxonomy, ray.put(tcache) if len(tcache) else None, score_ref)
            stats, wall = _execute(ds, cfg, run_id, taxonomy)
        manifest = _manifest(cfg, run_id, "label", taxonomy, inputs, stats, wall, started, resumed_rows,
                             {"cache_sizes": {"transcripts": len(tcache), "score_pairs": n_scores}})
        manifest = commit(cfg.output, run_id, taxonomy.name, taxonomy.version, cfg.scorer.key_hash(), inputs.num_rows, manifest)
    finally:
        lock.release()
    write_report_or_warn(cfg.output, manifest)
    return RunResult(run_id, manifest, cfg.output)


RELABEL_COLUMNS = ["utt_id", "uri", "audio_sha256", "duration_s", "text", "language", "language_prob", "avg_logprob",
                   "no_speech_prob", "error", "asr_model", "asr_config_hash"]


def latest_run(root: str, kinds=("label", "relabel")) -> Optional[dict[str, Any]]:
    """Manifest of the newest committed run under ``root`` (run ids sort by time)."""
    from labeler.table import manifest_run_ids, read_manifest

    for name in reversed(manifest_run_ids(root)):
        m = read_manifest(root, name)
        if m and m.get("status") == "committed" and m.get("kind") in kinds:
            return m
    return None


def run_relabel(cfg: LabelConfig, from_run: Optional[str] = None) -> RunResult:
    """A new labels partition for ``cfg.taxonomy`` from stored transcripts alone: no audio is
    read and no ASR model is loaded. The utterances are those of ``from_run`` (default: the
    newest committed run under ``cfg.output``); rows that failed before ASR stay error rows."""
    import pyarrow.dataset as pads

    from labeler.errors import InputError
    from labeler.io import filesystem
    from labeler.runs import claim_run
    from labeler.table import commit, read_manifest
    from labeler.taxonomy import load_taxonomy

    if not cfg.output:
        raise InputError("relabel needs --output, the root of earlier runs")
    taxonomy = load_taxonomy(cfg.taxonomy)
    source = read_manifest(cfg.output, from_run) if from_run else latest_run(cfg.output)
    if source is None or source.get("status") != "committed":
        raise InputError(f"no committed run {'named ' + from_run + ' ' if from_run else ''}under {redact(cfg.output)} to relabel")
    if cfg.run_id:
        existing = read_manifest(cfg.output, cfg.run_id)
        if existing and existing.get("status") == "committed":
            return RunResult(cfg.run_id, existing, cfg.output)
    fs, path = filesystem(unredacted_partition(cfg.output, source))
    inputs = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=RELABEL_COLUMNS).sort_by("utt_id")
    init_ray(cfg)
    started = time.time()
    key = cfg.run_key(taxonomy, kind="relabel", source=source["run_id"])
    run_id, lock, _ = claim_run(cfg.output, key, "relabel", cfg.run_id, new_run_id)
    try:
        import ray

        todo, resumed_rows = _remaining(inputs, cfg.output, run_id)
        todo = todo.append_column("asr_cached", pa.array([True] * todo.num_rows, pa.bool_()))
        score_ref, n_scores = _score_cache_ref(cfg, taxonomy)
        stats, wall = {"rows": 0}, 0.0
        if todo.num_rows:
            ds = ray.data.from_arrow(_chunks(todo, cfg.scorer.batch_size))
            stats, wall = _execute(add_entail_stage(ds, cfg, taxonomy, score_ref), cfg, run_id, taxonomy)
        extra = {"source_run": source["run_id"], "audio_files_read": 0, "asr_model_loaded": False,
                 "cache_sizes": {"score_pairs": n_scores}}
        manifest = _manifest(cfg, run_id, "relabel", taxonomy, inputs, stats, wall, started, resumed_rows, extra)
        manifest["input"] = f"run:{source['run_id']}"
        manifest["models"]["asr"] = source["models"]["asr"]
        manifest["models"]["asr_config_hash"] = source["models"]["asr_config_hash"]
        manifest = commit(cfg.output, run_id, taxonomy.name, taxonomy.version, cfg.scorer.key_hash(), inputs.num_rows, manifest)
    finally:
        lock.release()
    write_report_or_warn(cfg.output, manifest)
    return RunResult(run_id, manifest, cfg.output)


def write_report_or_warn(root: str, manifest: dict[str, Any]) -> None:
    """The run report (``reports/<run_id>.json`` and ``.png``) of a committed run. Best
    effort on purpose: the run is already committed, so a report that cannot be written
    (no matplotlib, a full disk) is a warning, never a failed run."""
    import logging

    from labeler.io import redact_text
    from labeler.report import write_report

    try:
        write_report(root, manifest)
    except Exception as exc:
        logging.getLogger("labeler").warning(
            "run %s is committed but its report could not be written: %s", manifest["run_id"],
            redact_text(f"{type(exc).__name__}: {exc}"))


def unredacted_partition(root: str, manifest: dict[str, Any]) -> str:
    from labeler.table import labels_partition

    tax = manifest["taxonomy"]
    return labels_partition(root, tax["name"], tax["version"], manifest["run_id"])


def redact_config(cfg: LabelConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["input"] = redact(data["input"]) if data.get("input") else None
    data["output"] = redact(data["output"]) if data.get("output") else None
    if data.get("ray", {}).get("address"):
        data["ray"]["address"] = redact(data["ray"]["address"])
    return data


def find_lanser_error(exc: BaseException) -> Optional[LanserError]:
    """Ray wraps an actor's exception; dig out our own fatal error to report it plainly."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LanserError):
            return e
        stack.extend([e.__cause__, e.__context__])
        val = getattr(e, "cause", None)
        if isinstance(val, BaseException):
            stack.append(val)
    # An actor that died in __init__ (e.g. a model that cannot load) reaches the driver as
    # ActorDiedError carrying only the remote traceback's text: recover our error from it.
    import re

    from labeler import errors

    found = re.findall(r"labeler\.errors\.(\w+): (.+)", str(exc))
    if found:
        name, msg = found[-1]
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, LanserError):
            return cls(msg.strip())
    return None
