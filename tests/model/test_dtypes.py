"""`dtype = "auto"`: resolved from the device type, the CPU's flags and the backend, the same every time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddgan.model import dtypes
from ddgan.model.dtypes import cpu_flags, preferred_dtype, resolve_dtype
from ddgan.model.sampler import SamplerError, open_sampler

CPU = torch.device("cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_auto_is_bf16_with_amx_only_and_float32_otherwise() -> None:
    assert preferred_dtype(CPU, frozenset({"amx_bf16", "amx_tile", "avx512_bf16"})) == "bfloat16"
    assert preferred_dtype(CPU, frozenset({"avx512_bf16", "avx512_vnni"})) == "float32"  # Zen 4/5: no AMX
    assert preferred_dtype(CPU, frozenset({"avx2", "fma"})) == "float32"
    assert preferred_dtype(torch.device("mps")) == "float32"
    assert resolve_dtype("float16", CPU, ("float32",)) == "float16"  # not auto: left to the factory to check


def test_a_backend_without_the_preferred_dtype_gets_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert resolve_dtype("auto", CPU, ("float32", "float16", "bfloat16")) == "bfloat16"
    assert resolve_dtype("auto", CPU, ("float32", "float16")) == "float32"  # onnxruntime, tensorrt


def test_open_sampler_reports_the_resolved_dtype(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = preferred_dtype(CPU)
    assert open_sampler(tiny_model_dir, dtype="auto").info.dtype == expected
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    sampler = open_sampler(tiny_model_dir, dtype="auto")
    assert sampler.info.dtype == "bfloat16" and sampler.sample([3]).dtype == torch.float32
    with pytest.raises(SamplerError, match="unknown dtype 'float64'"):
        open_sampler(tiny_model_dir, dtype="float64")
