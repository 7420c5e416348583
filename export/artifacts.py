"""Exported artifacts of a model directory (ONNX graphs, TensorRT engines) and the JSON that describes them.

Every artifact `X` has a metadata file `X.json` beside it recording what it was built from: the weights digest
of the model directory (`model.checkpoint.weights_digest`), the sha256 of the artifact itself, the chain's
shapes and batch range, the precision and the tool versions. Loaders refuse an artifact whose JSON is missing,
whose file changed since export, or whose model weights changed since export (stale), and say how to rebuild it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddgan.model.checkpoint import atomic_write_bytes, file_sha256, weights_digest

ONNX_FORMAT = "ddgan-chain-onnx"
ENGINE_FORMAT = "ddgan-chain-tensorrt"
FORMAT_VERSION = 1

INPUT_NAMES = ("x_T", "z", "noise")
OUTPUT_NAME = "x_0"
BATCH_DIM = "batch"

PRECISIONS = ("fp32", "fp16")


class ArtifactError(RuntimeError):
    """An exported artifact is missing, unreadable, inconsistent, stale, or built for another machine."""


class StaleArtifactError(ArtifactError):
    """The model weights changed after the artifact was exported."""


def onnx_file_name(precision: str) -> str:
    """`chain.onnx` (fp32) or `chain.fp16.onnx`: the names loaders look for inside a model directory."""
    _check_precision(precision)
    return "chain.onnx" if precision == "fp32" else "chain.fp16.onnx"


def engine_file_name(precision: str) -> str:
    """`chain.plan` (fp32) or `chain.fp16.plan`."""
    _check_precision(precision)
    return "chain.plan" if precision == "fp32" else "chain.fp16.plan"


def metadata_path(artifact: str | Path) -> Path:
    """The JSON beside an artifact: `chain.onnx` -> `chain.onnx.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ArtifactError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@dataclass(frozen=True)
class Verification:
    """How the export checked itself: max |runtime - torch fp32| over fresh random inputs at each batch size."""

    runtime: str
    batch_sizes: tuple[int, ...]
    max_abs_error: float
    tolerance: float
    # the same images as 8-bit pixels: |Δ| in grey levels (mean, 99th percentile, max); None before 0.4
    uint8_mean_levels: float | None = None
    uint8_p99_levels: float | None = None
    uint8_max_levels: float | None = None


@dataclass(frozen=True)
class OnnxMetadata:
    """What `chain.onnx` / `chain.fp16.onnx` is: written by `ddgan export onnx`, read by the backends."""

    file: str
    sha256: str
    precision: str
    io_dtype: str
    opset: int
    num_timesteps: int
    image_shape: tuple[int, int, int]
    nz: int
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    batch_min: int
    batch_max: int
    example_batch: int
    weights_digest: str
    model_config: dict[str, Any]
    verification: Verification
    versions: dict[str, str]
    created: str = field(default_factory=utc_now)
    format: str = ONNX_FORMAT
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class EngineMetadata:
    """What a TensorRT `chain.plan` was built for: written by `ddgan export trt`, checked before deserialising."""

    file: str
    sha256: str
    precision: str
    io_dtype: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profile: dict[str, int]
    num_timesteps: int
    image_shape: tuple[int, int, int]
    nz: int
    onnx_file: str
    onnx_sha256: str
    weights_digest: str
    timing_cache: str
    build_seconds: float
    created: str = field(default_factory=utc_now)
    format: str = ENGINE_FORMAT
    format_version: int = FORMAT_VERSION


def write_metadata(artifact: str | Path, metadata: OnnxMetadata | EngineMetadata) -> Path:
    """Write `artifact.json` atomically."""
    path = metadata_path(artifact)
    text = json.dumps(dataclasses.asdict(metadata), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def _read_json(artifact: Path, expected_format: str) -> dict[str, Any]:
    path = metadata_path(artifact)
    if not path.is_file():
        raise ArtifactError(f"{artifact} has no metadata file {path.name}; re-export it")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise ArtifactError(f"{path} is not {expected_format} metadata")
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {data.get('format_version')}, this code reads {FORMAT_VERSION}")
    return data


def read_onnx_metadata(artifact: str | Path) -> OnnxMetadata:
    data = _read_json(Path(artifact), ONNX_FORMAT)
    try:
        data["image_shape"] = tuple(data["image_shape"])
        verification = dict(data["verification"])
        verification["batch_sizes"] = tuple(verification["batch_sizes"])
        data["verification"] = Verification(**verification)
        return OnnxMetadata(**data)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{metadata_path(artifact)} is malformed: {exc}") from exc


def read_engine_metadata(artifact: str | Path) -> EngineMetadata:
    data = _read_json(Path(artifact), ENGINE_FORMAT)
    try:
        data["image_shape"] = tuple(data["image_shape"])
        return EngineMetadata(**data)
    except TypeError as exc:
        raise ArtifactError(f"{metadata_path(artifact)} is malformed: {exc}") from exc


def onnx_export_command(model_dir: str | Path, precision: str) -> str:
    flag = " --fp16" if precision == "fp16" else ""
    out = Path(model_dir) / onnx_file_name(precision)
    return f"ddgan export onnx --model {model_dir} -o {out}{flag}"


def engine_build_command(model_dir: str | Path, precision: str) -> str:
    flag = " --fp16" if precision == "fp16" else ""
    onnx = Path(model_dir) / onnx_file_name(precision)
    return f"{onnx_export_command(model_dir, precision)} && ddgan export trt --onnx {onnx}{flag}"


def check_artifact(
    artifact: Path, metadata: OnnxMetadata | EngineMetadata, model_dir: str | Path, rebuild_hint: str
) -> None:
    """Refuse an artifact that changed after export or whose model weights changed since (stale)."""
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} is missing; build it with: {rebuild_hint}")
    if file_sha256(artifact) != metadata.sha256:
        raise ArtifactError(
            f"{artifact} does not match its metadata {metadata_path(artifact).name} (file replaced after export); "
            f"rebuild it with: {rebuild_hint}"
        )
    current = weights_digest(model_dir)
    if current != metadata.weights_digest:
        raise StaleArtifactError(
            f"{artifact} is stale: it was exported from weights {metadata.weights_digest[:12]}, but "
            f"{Path(model_dir)} now holds weights {current[:12]}; re-export it with: {rebuild_hint}"
        )
