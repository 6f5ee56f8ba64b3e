"""``scorer.dtype: auto`` follows the machine: the CPU flags are injected, never the host's."""

import pytest

from labeler.config import ScorerConfig
from labeler.models import vllm_engine
from labeler.models.device import cpu_bf16_hardware, cpu_model, choose_dtype, read_cpu_flags

# Flags as /proc/cpuinfo lists them, trimmed.
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # this project's CI machine (AMD EPYC, no AVX-512)
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni"}  # issue 17's machine
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}  # Cooper Lake, Zen 4
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}  # Sapphire Rapids
ARM_BF16 = {"fp", "asimd", "sve", "bf16", "i8mm"}  # Graviton 3
ARM_NO_BF16 = {"fp", "asimd", "crc32", "atomics"}  # Graviton 2

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha1 sve bf16 i8mm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("flags, hardware", [
    (AVX2_ONLY, False), (AVX512_NO_BF16, False), (AVX512_BF16, True), (AMX, True),
    (ARM_BF16, True), (ARM_NO_BF16, False), (set(), False), (None, False),
])
def test_bf16_hardware_from_flags(flags, hardware):
    assert cpu_bf16_hardware(flags) is hardware


@pytest.mark.parametrize("flags, dtype", [
    (AVX2_ONLY, "float32"), (AVX512_NO_BF16, "float32"), (AVX512_BF16, "bfloat16"), (AMX, "bfloat16"),
    (ARM_BF16, "bfloat16"), (ARM_NO_BF16, "float32"), (None, "float32"),
])
def test_auto_on_vllm_cpu_follows_the_flags(flags, dtype):
    got, reason = choose_dtype("auto", "vllm", "cpu", flags)
    assert got == dtype
    if dtype == "bfloat16":
        assert "hardware" in reason and any(f in reason for f in ("amx_bf16", "avx512_bf16", "bf16"))
    elif flags is None:
        assert "unknown" in reason
    else:
        assert "emulated" in reason and "avx512_bf16" in reason


def test_auto_on_vllm_gpu_is_vllms_choice_whatever_the_cpu():
    for flags in (AVX2_ONLY, AMX, None):
        dtype, reason = choose_dtype("auto", "vllm", "gpu", flags)
        assert dtype == "auto" and "vLLM's choice" in reason


def test_transformers_auto_is_fp32_on_cpu_and_fp16_on_cuda_with_half_precision():
    assert choose_dtype("auto", "transformers", "cpu", AMX)[0] == "float32"  # bf16 hardware or not
    assert choose_dtype("auto", "transformers", "cpu", AVX2_ONLY)[0] == "float32"
    assert choose_dtype("auto", "transformers", "cuda", None)[0] == "float16"
    assert choose_dtype("auto", "transformers", "cuda", None, half_precision=False)[0] == "float32"


@pytest.mark.parametrize("engine, device", [("vllm", "cpu"), ("vllm", "gpu"), ("transformers", "cpu"), ("transformers", "cuda")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_set_dtype_is_kept(engine, device, dtype):
    got, reason = choose_dtype(dtype, engine, device, AVX2_ONLY)
    assert got == dtype and "set in the config" in reason


def test_vllm_dtype_reads_the_flags_it_is_given(monkeypatch):
    monkeypatch.setattr(vllm_engine, "_vllm_is_cpu", lambda: True)
    auto = ScorerConfig(backend="llm", engine="vllm", model="m")
    assert vllm_engine.vllm_dtype(auto, AVX512_NO_BF16)[0] == "float32"
    assert vllm_engine.vllm_dtype(auto, AMX)[0] == "bfloat16"
    assert vllm_engine.vllm_dtype(ScorerConfig(backend="llm", engine="vllm", model="m", dtype="bfloat16"), AVX2_ONLY)[0] == "bfloat16"
    # without flags given: this machine's, read from /proc/cpuinfo
    monkeypatch.setattr(vllm_engine, "read_cpu_flags", lambda: frozenset(AMX))
    assert vllm_engine.vllm_dtype(auto)[0] == "bfloat16"
    monkeypatch.setattr(vllm_engine, "read_cpu_flags", lambda: frozenset(AVX2_ONLY))
    assert vllm_engine.vllm_dtype(auto)[0] == "float32"
    # the engine gets the chosen dtype, never "auto" on CPU
    args = vllm_engine.vllm_engine_args("/m", auto, max_model_len=256, dtype=vllm_engine.vllm_dtype(auto)[0])
    assert args["dtype"] == "float32"
    monkeypatch.setattr(vllm_engine, "_vllm_is_cpu", lambda: False)
    assert vllm_engine.vllm_dtype(auto)[0] == "auto"


def test_flags_and_model_read_from_cpuinfo(tmp_path):
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text(X86_CPUINFO)
    arm.write_text(ARM_CPUINFO)
    flags = read_cpu_flags(str(x86))
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= flags and "spectre_v1" not in flags  # flags, not bugs
    assert cpu_model(str(x86)) == "Intel(R) Xeon(R) Platinum 8480+"
    assert read_cpu_flags(str(arm)) >= {"bf16", "sve"} and cpu_bf16_hardware(read_cpu_flags(str(arm)))
    assert read_cpu_flags(str(tmp_path / "missing")) is None  # not Linux: unknown, so fp32
    assert choose_dtype("auto", "vllm", "cpu", read_cpu_flags(str(tmp_path / "missing")))[0] == "float32"


def test_auto_keeps_its_cache_key():
    """The key names the configured dtype (resolved on the actors' nodes, not the driver)."""
    assert ScorerConfig(backend="llm", engine="vllm", model="m").cache_key()["dtype"] == "auto"
    assert ScorerConfig(backend="llm", engine="vllm", model="m").key_hash() != \
        ScorerConfig(backend="llm", engine="vllm", model="m", dtype="float32").key_hash()
