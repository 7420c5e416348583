"""OpenVINO as a chain runner on the CPU: `run_chain(x_T, z, noise) -> x_0` over the exported fp32 `chain.onnx`.

OpenVINO reads the same ONNX graph as ONNX Runtime (so the same artefact checks apply: metadata present, file
unchanged, weights not stale, config equal) and compiles it for this CPU. The precision is explicit: float32
pins OpenVINO's inference precision to f32 (by default it would run bf16 on AMX CPUs, a different image),
bfloat16 asks for bf16 and is refused on CPUs whose plugin does not list BF16 among its capabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddgan.export.artifacts import INPUT_NAMES, OUTPUT_NAME

logger = logging.getLogger(__name__)

PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


class OpenVINOUnavailableError(RuntimeError):
    """openvino is not installed, or this CPU cannot run the requested precision."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise OpenVINOUnavailableError(f"openvino is not installed ({exc}); pip install -e '.[openvino]'") from exc
    return openvino


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU computes natively (e.g. FP32, BF16, INT8)."""
    return list(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def precision_unavailable(dtype: str) -> str | None:
    """None if OpenVINO can compute in `dtype` on this CPU, else why not."""
    if dtype not in PRECISION_HINTS:
        return f"openvino computes in {', '.join(PRECISION_HINTS)}, not {dtype}"
    if dtype == "bfloat16" and "BF16" not in cpu_capabilities():
        return "this CPU has no bf16 support in OpenVINO (OPTIMIZATION_CAPABILITIES lacks BF16)"
    return None


class OpenVINOChain:
    """A compiled OpenVINO model of the chain; float32 CPU tensors in and out."""

    def __init__(self, path: str | Path, dtype: str = "float32", threads: int | None = None) -> None:
        reason = precision_unavailable(dtype)
        if reason is not None:
            raise OpenVINOUnavailableError(reason)
        ov = _openvino()
        self.path = Path(path)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(OUTPUT_NAME)
        logger.info("openvino %s model of %s (%s)", dtype, self.path, ov.__version__)

    def __call__(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        feeds = {
            name: np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())
            for name, t in zip(INPUT_NAMES, (x_T, z, noise), strict=True)
        }
        result = self.request.infer(feeds)
        return torch.from_numpy(np.array(result[self.output], dtype=np.float32, copy=True))
