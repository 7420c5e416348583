"""Backends: one `DDGANSampler` facade over torch eager, torch.compile, ONNX Runtime or TensorRT.

Every backend is a `run_chain(x_T, z, noise) -> x_0` over the same explicit noise, so a seed gives the same
image on every backend within that backend's tolerance. Exported artifacts are found inside the model directory
(`chain.onnx`, `chain.fp16.onnx`, `chain.plan`, `chain.fp16.plan`, each with its `.json`) and refused when
stale (weights changed since export), with the command that rebuilds them.

dtype selects the precision: float32 (all backends), float16 (torch, or the fp16 artifacts), bfloat16 (torch
only). The fp16 artifacts take and return float32 tensors, so their samplers report dtype float32 (the dtype
the sampler hands to `run_chain`).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddgan.export.artifacts import (
    ArtifactError,
    check_artifact,
    engine_build_command,
    engine_file_name,
    onnx_export_command,
    onnx_file_name,
    read_engine_metadata,
    read_onnx_metadata,
)
from ddgan.export.ort_backend import OnnxRuntimeChain, OnnxRuntimeUnavailableError, Provider, default_providers
from ddgan.export.torch_backend import CompiledChain, CudaGraphChain
from ddgan.export.trt_build import TensorRTUnavailableError, import_tensorrt
from ddgan.model.checkpoint import load_config, load_model
from ddgan.model.config import ConfigError, ModelConfig
from ddgan.model.sampler import DDGANSampler, RunChain, torch_chain

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
ARTIFACT_PRECISION = {torch.float32: "fp32", torch.float16: "fp16"}


class BackendError(RuntimeError):
    """A backend is unknown, not installed here, or cannot run with the requested device/dtype."""


def backend_availability(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Each backend -> None if it can run on `device` in this environment, else the reason it cannot."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    reasons: dict[str, str | None] = {"torch": None}
    if cuda and not torch.cuda.is_available():
        return dict.fromkeys(BACKENDS, "CUDA is not available in this process")
    if cuda and importlib.util.find_spec("triton") is None:
        reasons["torch-compile"] = "torch.compile on CUDA needs triton"
    elif not cuda and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        reasons["torch-compile"] = "torch.compile on the CPU needs a C++ compiler (g++)"
    else:
        reasons["torch-compile"] = None
    try:
        default_providers(device)
        reasons["onnxruntime"] = None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"
    except OnnxRuntimeUnavailableError as exc:
        reasons["onnxruntime"] = str(exc)
    if not cuda:
        reasons["tensorrt"] = "TensorRT runs on CUDA devices only"
    else:
        try:
            import_tensorrt()
            reasons["tensorrt"] = None
        except TensorRTUnavailableError as exc:
            reasons["tensorrt"] = str(exc)
    return reasons


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on `device` here (artifacts still have to be exported per model)."""
    return [name for name, reason in backend_availability(device).items() if reason is None]


def _artifact_precision(backend: str, dtype: torch.dtype) -> str:
    if dtype not in ARTIFACT_PRECISION:
        raise BackendError(f"backend {backend!r} runs float32 or float16 exports, not {dtype}; use backend 'torch'")
    return ARTIFACT_PRECISION[dtype]


def _check_config(model_dir: Path, exported: dict[str, Any], config: ModelConfig, artifact: Path) -> None:
    try:
        exported_config = ModelConfig.from_dict(exported)
    except ConfigError as exc:
        raise ArtifactError(f"{artifact}: unreadable model config in its metadata: {exc}") from exc
    for part in ("generator", "diffusion"):
        if getattr(exported_config, part) != getattr(config, part):
            raise ArtifactError(
                f"{artifact} was exported for another {part} config than {model_dir / 'config.json'} now holds; "
                "re-export it"
            )


def onnx_chain(
    model_dir: Path,
    config: ModelConfig,
    device: torch.device,
    precision: str,
    artifact: Path | None = None,
    providers: Sequence[Provider] | None = None,
    threads: int | None = None,
    tensorrt_provider: bool = False,
) -> OnnxRuntimeChain:
    path = artifact or model_dir / onnx_file_name(precision)
    hint = onnx_export_command(model_dir, precision)
    if not path.is_file():
        raise ArtifactError(f"{model_dir} has no exported {path.name}; export it with: {hint}")
    metadata = read_onnx_metadata(path)
    check_artifact(path, metadata, model_dir, hint)
    _check_config(model_dir, metadata.model_config, config, path)
    if providers is None:
        providers = default_providers(device, tensorrt_provider, cache_dir=model_dir / "ort-trt-cache")
    return OnnxRuntimeChain(path, device, providers, threads)


def tensorrt_chain(model_dir: Path, device: torch.device, precision: str, artifact: Path | None = None) -> RunChain:
    from ddgan.export.trt_runtime import TensorRTChain

    import_tensorrt()  # a clear "not installed / no GPU" before anything else
    path = artifact or model_dir / engine_file_name(precision)
    hint = engine_build_command(model_dir, precision)
    if not path.is_file():
        raise ArtifactError(f"{model_dir} has no TensorRT engine {path.name}; build it with: {hint}")
    metadata = read_engine_metadata(path)
    check_artifact(path, metadata, model_dir, hint)
    return TensorRTChain(path, metadata, device, hint)


def load_sampler(
    model_dir: str | Path,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    artifact: str | Path | None = None,
    cuda_graphs: bool = False,
    compile_mode: str | None = None,
    providers: Sequence[Provider] | None = None,
    threads: int | None = None,
    tensorrt_provider: bool = False,
) -> DDGANSampler:
    """A `DDGANSampler` of `model_dir` whose chain runs on `backend`.

    Options: `cuda_graphs` (torch on CUDA: replay captured graphs), `compile_mode` (torch-compile: a
    `torch.compile` mode; default `reduce-overhead` on CUDA, which uses CUDA graphs), `artifact` (an explicit
    ONNX/engine path instead of the model directory's), `providers`/`threads`/`tensorrt_provider` (onnxruntime).
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    model_dir, device = Path(model_dir), torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {device} requested but CUDA is not available")
    artifact_path = Path(artifact) if artifact is not None else None
    config = load_config(model_dir)
    run_chain: RunChain
    if backend in ("torch", "torch-compile"):
        _, generator = load_model(model_dir, device="cpu")
        chain = torch_chain(generator, config, device, dtype)
        if backend == "torch-compile":
            run_chain = CompiledChain(chain, device, compile_mode)
        elif cuda_graphs:
            run_chain = CudaGraphChain(chain, device)
        else:
            run_chain = chain
        return DDGANSampler(config, run_chain, device, dtype, backend=backend)
    precision = _artifact_precision(backend, dtype)
    if backend == "onnxruntime":
        try:
            run_chain = onnx_chain(
                model_dir, config, device, precision, artifact_path, providers, threads, tensorrt_provider
            )
        except OnnxRuntimeUnavailableError as exc:
            raise BackendError(str(exc)) from exc
    else:
        try:
            run_chain = tensorrt_chain(model_dir, device, precision, artifact_path)
        except TensorRTUnavailableError as exc:
            raise BackendError(str(exc)) from exc
    return DDGANSampler(config, run_chain, device, torch.float32, backend=backend)
