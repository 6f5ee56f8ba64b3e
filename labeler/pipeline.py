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
        env = {"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME") if k in os.environ}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=env)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress
    ctx.print_on_execution_start = False


def _decode_batch(batch: pa.Table, max_duration_s: float) -> pa.Table:
    from labeler.stages.decode import DecodeStage

    return DecodeStage(max_duration_s)(batch)


def _actor_args(num_cpus: float, num_gpus: float, concurrency) -> dict[str, Any]:
    import ray

    if isinstance(concurrency, tuple):
        pool = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ray.data.ActorPoolStrategy(size=concurrency)
    args: dict[str, Any] = {"num_cpus": num_cpus, "compute": pool}
    if num_gpus:
        args["num_gpus"] = num_gpus
    return args


def build_dataset(cfg: LabelConfig, inputs: pa.Table, taxonomy):
    """The lazy Ray Dataset of a run: one output row per input row."""
    import ray

    from labeler.stages.asr import ASRStage
    from labeler.stages.entail import EntailStage

    step = cfg.decode.rows_per_block
    chunks = [inputs.slice(i, step) for i in range(0, inputs.num_rows, step)]
    ds = ray.data.from_arrow(chunks)
    ds = ds.map_batches(
        _decode_batch,
        fn_kwargs={"max_duration_s": cfg.decode.max_duration_s},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=cfg.decode.num_cpus,
    )
    ds = ds.map_batches(
        ASRStage,
        fn_constructor_args=(cfg.asr,),
        batch_format="pyarrow",
        batch_size=cfg.asr.batch_size,
        **_actor_args(cfg.asr.num_cpus, cfg.asr.num_gpus, cfg.asr.concurrency),
    )
    ds = ds.map_batches(
        EntailStage,
        fn_constructor_args=(cfg.scorer, cfg.abstain, taxonomy),
        batch_format="pyarrow",
        batch_size=cfg.scorer.batch_size,
        **_actor_args(cfg.scorer.num_cpus, cfg.scorer.num_gpus, cfg.scorer.concurrency),
    )
    return ds


def run_labeling(cfg: LabelConfig) -> RunResult:
    """Label ``cfg.input`` into ``cfg.output``; returns the committed run's manifest."""
    from labeler.sources import resolve_input
    from labeler.table import RunSink, commit, read_manifest
    from labeler.taxonomy import load_taxonomy

    cfg.require_io()
    taxonomy = load_taxonomy(cfg.taxonomy)
    run_id = cfg.run_id or new_run_id()
    existing = read_manifest(cfg.output, run_id)
    if existing and existing.get("status") == "committed":
        return RunResult(run_id, existing, cfg.output)  # idempotent: already done
    inputs = resolve_input(cfg.input)
    init_ray(cfg)

    started = time.time()
    t0 = time.perf_counter()
    ds = build_dataset(cfg, inputs, taxonomy)
    sink = RunSink(cfg.output, run_id, cfg.out.rows_per_file, cfg.out.compression)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": cfg.out.write_num_cpus})
    except Exception as exc:
        cause = find_lanser_error(exc)
        if cause is not None:
            raise cause from None
        raise
    wall = time.perf_counter() - t0
    stats = sink.stats or {"rows": 0}
    manifest = {
        "run_id": run_id,
        "kind": "label",
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "wall_seconds": round(wall, 3),
        "input": redact(cfg.input),
        "output": redact(cfg.output),
        "taxonomy": taxonomy.to_dict(),
        "models": {"asr": cfg.asr.model, "asr_config_hash": cfg.asr.config_hash(), "scorer": f"{cfg.scorer.backend}:{cfg.scorer.model}"},
        "config": redact_config(cfg),
        "counts": {
            "input_rows": inputs.num_rows,
            "output_rows": stats.get("rows", 0),
            "status": stats.get("status", {}),
            "labels": stats.get("labels", {}),
            "abstain_reasons": stats.get("abstain_reasons", {}),
        },
        "confidence_histogram": {"bins": [i / 10 for i in range(11)], "counts": stats.get("confidence_hist", [])},
        "audio_seconds": round(stats.get("audio_seconds", 0.0), 3),
        "throughput_audio_s_per_s": round(stats.get("audio_seconds", 0.0) / wall, 3) if wall > 0 else None,
        "stage_busy_seconds": {k.removeprefix("t_"): round(v, 3) for k, v in stats.get("stage_seconds", {}).items()},
        "files": [{"table": t, "file": f, "rows": r} for t, f, r in stats.get("files", [])],
        "errors_sample": stats.get("errors_sample", []),
    }
    manifest = commit(cfg.output, run_id, taxonomy.name, taxonomy.version, inputs.num_rows, stats, manifest)
    return RunResult(run_id, manifest, cfg.output)


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
