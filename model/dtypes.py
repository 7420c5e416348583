"""`dtype = "auto"`: the dtype a device computes this network fastest in, resolved once, from fixed facts.

The rule (docs/benchmarks.md has the measurements behind it):
- CUDA: bfloat16 where the GPU supports it (Ampere and later), float32 otherwise.
- CPU: bfloat16 only with AMX (`amx_bf16` in /proc/cpuinfo), whose tile units run bf16 convolutions several
  times faster than fp32. CPUs with only `avx512_bf16` (AMD Zen 4/5, Cooper Lake) have bf16 dot products but no
  faster convolutions: bf16 training measured ~2x slower than fp32 on a Zen 5 EPYC, and on CPUs without bf16
  instructions at all (AVX2, e.g. Zen 3) bf16 is emulated; float32 there.
- anything else (MPS): float32.
A backend that cannot compute in the preferred dtype gets float32. The result depends only on the device type,
the CPU's flags / the GPU's capability and the backend, never on a timing, so it is the same in every process on
the same machine: a seed's image is fixed by (device type, backend, resolved dtype, micro-batch).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch

AUTO = "auto"
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none: not Linux, or no access)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def preferred_dtype(device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The dtype `auto` means on `device` (before the backend's own dtypes are considered)."""
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    if device.type == "cpu":
        return "bfloat16" if "amx_bf16" in (cpu_flags() if flags is None else flags) else "float32"
    return "float32"


def resolve_dtype(requested: str, device: torch.device, backend_dtypes: Sequence[str]) -> str:
    """`requested` unchanged unless it is `auto`: then the preferred dtype if the backend computes in it."""
    if requested != AUTO:
        return requested
    preferred = preferred_dtype(device)
    return preferred if preferred in backend_dtypes else "float32"
