"""The exporters' backends of the sampler factory: ONNX Runtime, OpenVINO and TensorRT over exported chain artefacts.

`register()` adds them to `ddgan.model.sampler` (the composing program calls it: the `ddgan` command and the
server). Every backend runs the same explicit-noise chain, so a seed gives the same image on every backend
within that backend's tolerance. Artefacts are found inside the model directory (`chain.onnx`,
`chain.fp16.onnx`, `chain.plan`, `chain.fp16.plan`, each with its `.json`) and refused when stale (weights
changed since export), with the command that rebuilds them. dtype float32 selects the fp32 artefact, float16
the fp16 one; both take and return float32 tensors.
"""

from __future__ import annotations

import importlib.util
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
from ddgan.export.ort_backend import OnnxRuntimeChain, OnnxRuntimeUnavailableError, default_providers
from ddgan.export.trt_build import TensorRTUnavailableError, import_tensorrt
from ddgan.model.chain import BackendSpec, ChainRequest, RunChain
from ddgan.model.config import ConfigError, ModelConfig
from ddgan.model.sampler import register_backend

ARTIFACT_PRECISION = {torch.float32: "fp32", torch.float16: "fp16"}


def _precision(request: ChainRequest) -> str:
    return ARTIFACT_PRECISION[request.dtype]


def _model_dir(request: ChainRequest, backend: str) -> Path:
    if request.model_dir is None:
        raise ArtifactError(f"backend {backend!r} runs an exported model directory, not a preset")
    return request.model_dir


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


def onnx_chain(request: ChainRequest) -> RunChain:
    """An ONNX Runtime session over the model directory's (or `options["artifact"]`'s) exported chain."""
    model_dir, precision, options = _model_dir(request, "onnxruntime"), _precision(request), request.options
    path = Path(options["artifact"]) if "artifact" in options else model_dir / onnx_file_name(precision)
    hint = onnx_export_command(model_dir, precision)
    if not path.is_file():
        raise ArtifactError(f"{model_dir} has no exported {path.name}; export it with: {hint}")
    metadata = read_onnx_metadata(path)
    check_artifact(path, metadata, model_dir, hint)
    _check_config(model_dir, metadata.model_config, request.config, path)
    providers = options.get("providers") or default_providers(
        request.device, bool(options.get("tensorrt_provider")), cache_dir=model_dir / "ort-trt-cache"
    )
    return OnnxRuntimeChain(path, request.device, providers, options.get("threads"))


def openvino_chain(request: ChainRequest) -> RunChain:
    """OpenVINO over the model directory's (or `options["artifact"]`'s) fp32 chain.onnx, compiled for this CPU."""
    from ddgan.export.openvino_backend import OpenVINOChain

    model_dir, options = _model_dir(request, "openvino"), request.options
    path = Path(options["artifact"]) if "artifact" in options else model_dir / onnx_file_name("fp32")
    hint = onnx_export_command(model_dir, "fp32")
    if not path.is_file():
        raise ArtifactError(f"{model_dir} has no exported {path.name}; export it with: {hint}")
    metadata = read_onnx_metadata(path)
    if metadata.precision != "fp32":
        raise ArtifactError(f"{path} is a {metadata.precision} graph; openvino reads the fp32 chain.onnx")
    check_artifact(path, metadata, model_dir, hint)
    _check_config(model_dir, metadata.model_config, request.config, path)
    dtype = str(request.dtype).removeprefix("torch.")
    return OpenVINOChain(path, dtype, options.get("threads"))


def tensorrt_chain(request: ChainRequest) -> RunChain:
    """A deserialised TensorRT engine of the exported chain (built on this GPU with `ddgan export tensorrt`)."""
    from ddgan.export.trt_runtime import TensorRTChain

    import_tensorrt()  # a clear "not installed / no GPU" before anything else
    model_dir, precision = _model_dir(request, "tensorrt"), _precision(request)
    artifact = request.options.get("artifact")
    path = Path(artifact) if artifact else model_dir / engine_file_name(precision)
    hint = engine_build_command(model_dir, precision)
    if not path.is_file():
        raise ArtifactError(f"{model_dir} has no TensorRT engine {path.name}; build it with: {hint}")
    metadata = read_engine_metadata(path)
    check_artifact(path, metadata, model_dir, hint)
    return TensorRTChain(path, metadata, request.device, hint)


def _onnxruntime_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install -e '.[export]')"
    try:
        default_providers(device)
    except OnnxRuntimeUnavailableError as exc:
        return str(exc)
    return None


def _openvino_unavailable(device: torch.device) -> str | None:
    if device.type != "cpu":
        return "the openvino backend runs on the CPU only"
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install -e '.[openvino]')"
    return None


def _tensorrt_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "TensorRT runs on CUDA devices only"
    try:
        import_tensorrt()
    except TensorRTUnavailableError as exc:
        return str(exc)
    return None


EXPORT_BACKENDS = (
    BackendSpec(
        "onnxruntime",
        onnx_chain,
        "ONNX Runtime over the exported whole-chain graph (chain.onnx / chain.fp16.onnx)",
        dtypes=("float32", "float16"),
        options=("artifact", "providers", "threads", "tensorrt_provider"),
        unavailable=_onnxruntime_unavailable,
    ),
    BackendSpec(
        "openvino",
        openvino_chain,
        "OpenVINO (CPU) over the exported fp32 chain.onnx; float32 pinned to f32, bfloat16 where the CPU has it",
        dtypes=("float32", "bfloat16"),
        options=("artifact", "threads"),
        unavailable=_openvino_unavailable,
    ),
    BackendSpec(
        "tensorrt",
        tensorrt_chain,
        "a TensorRT engine of the exported chain (chain.plan / chain.fp16.plan), built on the serving GPU",
        dtypes=("float32", "float16"),
        options=("artifact",),
        unavailable=_tensorrt_unavailable,
    ),
)


def register() -> None:
    """Add the exporters' backends to the sampler factory (idempotent)."""
    for spec in EXPORT_BACKENDS:
        register_backend(spec)
