"""Which dtype a scorer computes in, chosen by the machine it runs on (``scorer.dtype: auto``).

bf16 halves the memory traffic of a model, but only pays where the CPU multiplies bf16 in
hardware: x86 with AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``), aarch64 with the
BF16 extension (``bf16``). Elsewhere PyTorch and vLLM emulate it by converting to fp32
and back, and it runs slower than fp32 while moving the scores more: ``bench.llm`` measured
vLLM on SmolLM2 at 1.1 pairs/s in bf16 and 12.1 in fp32 on an AVX2-only AMD EPYC (2
cores), and issue 17 saw bf16 vLLM slower than fp32 transformers on an AVX-512 CPU
without ``avx512_bf16``.

Pure functions: the CPU flags are read from ``/proc/cpuinfo`` (Linux) by default and can be
passed in, so the choice is testable for any machine. Torch and vLLM are not imported here.
"""

from __future__ import annotations

from typing import Iterable, Optional

CPUINFO = "/proc/cpuinfo"

BF16_HARDWARE_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
"""CPU flags that mean bf16 matrix arithmetic in hardware: Intel AMX and AVX-512 BF16 (x86,
``flags`` line of /proc/cpuinfo), the BF16 extension of aarch64 (``Features`` line)."""

REPORTED_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "bf16")
"""The flags benchmarks print beside their figures (those that decide a model's speed here)."""


def _cpuinfo(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _field(text: str, names: tuple[str, ...]) -> Optional[str]:
    """The value of the first ``name : value`` line of /proc/cpuinfo whose name is in ``names``."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in names:
            return value.strip()
    return None


def read_cpu_flags(path: str = CPUINFO) -> Optional[frozenset[str]]:
    """The CPU's feature flags (first processor's ``flags`` on x86, ``Features`` on aarch64),
    or None where they cannot be read (no /proc/cpuinfo: not Linux)."""
    text = _cpuinfo(path)
    if text is None:
        return None
    value = _field(text, ("flags", "features"))
    return None if value is None else frozenset(value.lower().split())


def cpu_model(path: str = CPUINFO) -> str:
    """The CPU's model name (``model name`` of /proc/cpuinfo, with its x86 family and model
    numbers, which a virtual machine's vague name may need), else what :mod:`platform` says."""
    import platform

    text = _cpuinfo(path)
    name = _field(text, ("model name", "cpu model", "cpu")) if text else None
    if not name:
        return platform.processor() or platform.machine() or "unknown CPU"
    family, model = _field(text, ("cpu family",)), _field(text, ("model",))
    return f"{name} (family {family}, model {model})" if family and model else name


def cpu_bf16_hardware(flags: Optional[Iterable[str]]) -> bool:
    """Whether a CPU with these flags computes bf16 in hardware (False when unknown)."""
    return flags is not None and any(f in set(flags) for f in BF16_HARDWARE_FLAGS)


def choose_dtype(configured: str, engine: str, device: str, flags: Optional[Iterable[str]] = None, *,
                 half_precision: bool = True) -> tuple[str, str]:
    """``(dtype, reason)`` a scorer runs in. ``configured`` is ``scorer.dtype``; ``engine``
    ``vllm`` or ``transformers``; ``device`` ``cpu`` or a GPU (``cuda``); ``flags`` the CPU's
    (:func:`read_cpu_flags`; None = unknown). Returns a dtype name for the engine: on a GPU
    vLLM keeps ``auto`` (its own choice, which the engine reports once it has started).

    >>> choose_dtype("auto", "vllm", "cpu", {"avx2", "avx512f"})[0]
    'float32'
    >>> choose_dtype("auto", "vllm", "cpu", {"avx512f", "avx512_bf16"})[0]
    'bfloat16'
    """
    if configured != "auto":
        return configured, f"scorer.dtype: {configured} (set in the config)"
    if engine == "transformers":
        if device == "cuda" and half_precision:
            return "float16", "auto, transformers on cuda with scorer.half_precision: float16"
        return "float32", f"auto, transformers on {device}: float32"
    if device != "cpu":
        return "auto", ("auto on GPU: vLLM's choice (the checkpoint's dtype, an fp32 one cast to 16 bits; "
                        "float16 where the GPU has no bf16)")
    if flags is None:
        return "float32", "auto on CPU, CPU flags unknown (no /proc/cpuinfo): float32"
    flags = set(flags)
    have = [f for f in BF16_HARDWARE_FLAGS if f in flags]
    if have:
        return "bfloat16", f"auto on CPU: bf16 in hardware ({', '.join(have)}): bfloat16"
    return "float32", ("auto on CPU: no bf16 hardware (none of " + ", ".join(BF16_HARDWARE_FLAGS)
                       + "), so bf16 would be emulated: float32")
