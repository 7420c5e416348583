"""`ddgan export trt`: a TensorRT 10.x engine of an exported chain graph, with a batch optimisation profile.

The network is built *strongly typed*: precision comes from the ONNX itself (fp32, or the fp16 export whose
group normalisations are float32 through explicit casts), not from builder flags. That is the only mode TRT 11
keeps (export-notes §7) and the one that cannot silently run GroupNorm in fp16 (§10). A timing cache beside the
engine makes rebuilds fast. The JSON beside the engine records the TensorRT version and the GPU it was built for;
engines are not portable across either, and the runtime refuses a mismatch with a message instead of crashing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddgan.export.artifacts import (
    INPUT_NAMES,
    ArtifactError,
    EngineMetadata,
    engine_file_name,
    file_sha256,
    read_onnx_metadata,
    write_metadata,
)
from ddgan.model.checkpoint import atomic_write_bytes

logger = logging.getLogger(__name__)

SUPPORTED_MAJOR = 10
INSTALL_HINT = (
    "install the `gpu` extra (tensorrt-cu13==10.16.1.11) on a CUDA machine; its libraries come from NVIDIA's "
    "package index (pypi.nvidia.com), which must be reachable or pre-staged"
)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT 10 or a CUDA GPU is missing: engines can be neither built nor run here."""


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str


def import_tensorrt() -> Any:
    """The `tensorrt` module (10.x), or a `TensorRTUnavailableError` saying exactly what is missing."""
    problems = []
    try:
        import tensorrt as trt
    except ImportError as exc:  # also raised when the wheel is present but its libraries are not
        trt = None
        problems.append(f"TensorRT is not importable ({exc}); {INSTALL_HINT}")
    import torch

    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible to torch (TensorRT engines are built on and run on a GPU)")
    if trt is not None and not str(trt.__version__).startswith(f"{SUPPORTED_MAJOR}."):
        problems.append(f"TensorRT {trt.__version__} found; this code needs TensorRT {SUPPORTED_MAJOR}.x")
    if problems:
        raise TensorRTUnavailableError("TensorRT backend unavailable: " + "; ".join(problems))
    return trt


def current_gpu(device_index: int = 0) -> GpuIdentity:
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return GpuIdentity(torch.cuda.get_device_name(device_index), f"{major}.{minor}")


def _check_profile(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ArtifactError(f"need 1 <= min-batch <= opt-batch <= max-batch, got {min_batch}, {opt_batch}, {max_batch}")


def build_engine(
    onnx_path: str | Path,
    output: str | Path | None = None,
    *,
    min_batch: int = 1,
    opt_batch: int = 16,
    max_batch: int = 64,
    fp16: bool = False,
    workspace_gib: float = 8.0,
    timing_cache: str | Path | None = None,
    device_index: int = 0,
) -> EngineMetadata:
    """Build `output` (default: chain.plan / chain.fp16.plan beside the ONNX) and its JSON, atomically."""
    onnx_path = Path(onnx_path)
    _check_profile(min_batch, opt_batch, max_batch)
    trt = import_tensorrt()
    onnx_meta = read_onnx_metadata(onnx_path)
    precision = "fp16" if fp16 else "fp32"
    if onnx_meta.precision != precision:
        raise ArtifactError(
            f"{onnx_path} is a {onnx_meta.precision} export but a {precision} engine was asked for; "
            f"use the {precision} ONNX (ddgan export onnx{' --fp16' if fp16 else ''}) or drop/add --fp16"
        )
    if file_sha256(onnx_path) != onnx_meta.sha256:
        raise ArtifactError(f"{onnx_path} does not match its metadata (file replaced after export); re-export it")
    output = Path(output) if output is not None else onnx_path.with_name(engine_file_name(precision))
    cache_path = Path(timing_cache) if timing_cache is not None else output.with_name("trt-timing.cache")

    import torch

    torch.cuda.set_device(device_index)
    gpu = current_gpu(device_index)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU is ignored, not fatal
    profile = builder.create_optimization_profile()
    c, h, w = onnx_meta.image_shape
    steps, nz = onnx_meta.num_timesteps, onnx_meta.nz
    shapes = {"x_T": lambda b: (b, c, h, w), "z": lambda b: (steps, b, nz), "noise": lambda b: (steps, b, c, h, w)}
    for name in INPUT_NAMES:
        profile.set_shape(name, shapes[name](min_batch), shapes[name](opt_batch), shapes[name](max_batch))
    config.add_optimization_profile(profile)

    logger.info(
        "building TensorRT %s engine on %s (batch %d/%d/%d) ...",
        precision,
        gpu.name,
        *(min_batch, opt_batch, max_batch),
    )
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    atomic_write_bytes(output, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    metadata = EngineMetadata(
        file=output.name,
        sha256=file_sha256(output),
        precision=precision,
        io_dtype=onnx_meta.io_dtype,
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        profile={"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch},
        num_timesteps=steps,
        image_shape=onnx_meta.image_shape,
        nz=nz,
        onnx_file=onnx_path.name,
        onnx_sha256=onnx_meta.sha256,
        weights_digest=onnx_meta.weights_digest,
        timing_cache=str(cache_path),
        build_seconds=round(seconds, 1),
    )
    write_metadata(output, metadata)
    logger.info("wrote %s (%.1f s build)", output, seconds)
    return metadata
