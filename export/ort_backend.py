"""ONNX Runtime as a chain runner: `run_chain(x_T, z, noise) -> x_0` over an exported `chain.onnx`.

On the CPU the tensors go through numpy (zero-copy views). On CUDA the torch tensors are bound in place with
I/O binding, so inputs and output never leave the GPU. ONNX Runtime silently falls back to the CPU provider
when a GPU provider cannot load its libraries; the session is checked so that a fallback is an error instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddgan.export.artifacts import INPUT_NAMES, OUTPUT_NAME

logger = logging.getLogger(__name__)

Provider = str | tuple[str, dict[str, Any]]


class OnnxRuntimeUnavailableError(RuntimeError):
    """onnxruntime, or the execution provider a device needs, is not installed or cannot load."""


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxRuntimeUnavailableError(
            f"onnxruntime is not installed ({exc}); install the `export` extra (or `gpu` for CUDA)"
        ) from exc
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_ort().get_available_providers())
    except OnnxRuntimeUnavailableError:
        return []


def default_providers(
    device: torch.device, tensorrt_provider: bool = False, cache_dir: Path | None = None
) -> list[Provider]:
    """CPU: the CPU provider. CUDA: (TensorRT provider if asked,) CUDA provider, then CPU for unsupported ops."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise OnnxRuntimeUnavailableError(f"onnxruntime backend runs on cpu or cuda, not {device.type!r}")
    available = available_providers()
    if "CUDAExecutionProvider" not in available:
        raise OnnxRuntimeUnavailableError(
            f"onnxruntime has no CUDAExecutionProvider (available: {available}); install onnxruntime-gpu "
            "(the `gpu` extra; ≥ 1.27 for CUDA 13, ≤ 1.26 for CUDA 12)"
        )
    index = device.index or 0
    providers: list[Provider] = []
    if tensorrt_provider:
        if "TensorrtExecutionProvider" not in available:
            raise OnnxRuntimeUnavailableError("onnxruntime has no TensorrtExecutionProvider (needs TensorRT 10 libs)")
        options: dict[str, Any] = {"device_id": index}
        if cache_dir is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        providers.append(("TensorrtExecutionProvider", options))
    providers += [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return providers


def ort_session(
    path: str | Path, providers: Sequence[Provider] = ("CPUExecutionProvider",), threads: int | None = None
) -> Any:
    """An InferenceSession with all graph optimisations; raises if the first provider did not load."""
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if session.get_providers()[0] != wanted:
        raise OnnxRuntimeUnavailableError(
            f"onnxruntime could not start {wanted} (session runs on {session.get_providers()}); "
            "check the CUDA/cuDNN/TensorRT libraries"
        )
    return session


class OnnxRuntimeChain:
    """Runs an exported chain graph; float32 tensors in and out on `device`."""

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        providers: Sequence[Provider] | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.providers = list(providers) if providers is not None else default_providers(self.device)
        self.session = ort_session(self.path, self.providers, threads)
        logger.info("onnxruntime session for %s on %s", self.path, self.session.get_providers())

    def __call__(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        inputs = [t.detach().to(self.device, torch.float32).contiguous() for t in (x_T, z, noise)]
        if self.device.type == "cuda":
            return self._run_bound(inputs)
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
        (x_0,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(x_0)

    def _run_bound(self, inputs: list[Tensor]) -> Tensor:
        index = self.device.index or 0
        binding = self.session.io_binding()
        for name, tensor in zip(INPUT_NAMES, inputs, strict=True):
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        x_0 = torch.empty(inputs[0].shape, dtype=torch.float32, device=self.device)
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(x_0.shape), x_0.data_ptr())
        # ONNX Runtime runs on its own CUDA stream: the inputs written on torch's stream must be complete.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return x_0
