"""`ddgan export onnx`: the whole T-step sampling chain as one ONNX graph, verified against torch.

The graph is `SamplingChain` itself: inputs x_T (B, C, H, W), z (T, B, nz), noise (T, B, C, H, W), output
x_0 (B, C, H, W) in [-1, 1], with all T generator calls and posterior steps unrolled. All randomness is an
input, so a seed drawn on the host gives the same image on every runtime (export-notes §3).

Precision. fp32: everything in float32. fp16: the generator's convolutions, attention and their activations are
float16; its group normalisations, z mapping network and AdaGN modulations compute in float32 (`Float16Generator`),
and the chain keeps float32 inputs, outputs and posterior arithmetic (x_t = c1·x̂_0 + c2·x_{t+1} + σ·ξ, DDPM
Eq. 7), with casts at the generator's boundary. Both variants take and return float32 tensors. The fp16 graph is
verified on 8-bit images (`FP16_MEAN_LEVELS`, `FP16_P99_LEVELS`), the fp32 one on the raw maximum error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ddgan.export.artifacts import (
    BATCH_DIM,
    INPUT_NAMES,
    OUTPUT_NAME,
    ArtifactError,
    OnnxMetadata,
    Verification,
    file_sha256,
    write_metadata,
)
from ddgan.export.ort_backend import ort_session
from ddgan.model.checkpoint import load_model, make_readable, weights_digest
from ddgan.model.config import ModelConfig
from ddgan.model.ddpm_io import is_ddpm_directory
from ddgan.model.diffusion import SamplingChain
from ddgan.model.images import to_uint8
from ddgan.model.ncsnpp import AdaptiveGroupNorm, NCSNpp
from ddgan.model.noise import chain_noise, image_seeds, random_seed

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # torch 2.13's default; GroupNorm exports as InstanceNormalization (export-notes §5)
# fp32: a trained generator's 4-step chain amplifies the engines' different summation orders (2.5e-4 on the bundled
# MNIST model, 0.03 of a grey level; 1e-4 failed its export as the README runs it), so the raw bound is 1e-3 and
# no 8-bit pixel may move by more than one level (a value on a rounding boundary).
FP32_TOLERANCE = 1e-3
FP32_MAX_LEVELS = 1.0
# fp16 against the fp32 torch chain, judged on the 8-bit images users get: on average at most 1 grey level
# off and 99% of pixels within 4 levels. A trained generator's 4-step chain turns float16 rounding into a few
# pixels off by more (edges move by a fraction of a pixel: 5 levels at the 99.9th percentile on the bundled
# MNIST model), so the raw max only catches broken graphs.
FP16_MEAN_LEVELS = 1.0
FP16_P99_LEVELS = 4.0
FP16_TOLERANCE = 0.5  # max |Δ| on [-1, 1]: no pixel off by a quarter of the range
EXAMPLE_BATCH = 2  # >= 2: an example batch of 1 silently makes the batch static (export-notes §4)
VERIFY_BATCHES = (1, 3)  # neither is the example batch, so verification exercises the dynamic dimension
VERIFY_BATCHES_FP16 = (3, 13)  # 16 images: enough pixels for a 99th percentile that means something


class ExportError(RuntimeError):
    """The export failed or its self-verification did not meet the tolerance."""


class Float16Generator(nn.Module):
    """The generator in float16 behind float32 inputs and outputs, its style path in float32.

    Float32 stay: the group normalisations (`model.ncsnpp.group_norm`), the z mapping network and every AdaGN
    modulation (style layer, gamma·norm + beta), whose float16 rounding moved trained MNIST samples by up to 31
    grey levels on its own (weights rounded one module kind at a time; convolutions: 5, the rest <= 3).
    """

    def __init__(self, generator: NCSNpp) -> None:
        super().__init__()
        self.generator = generator.half()
        self.generator.z_transform.float()
        for module in self.generator.modules():
            if isinstance(module, AdaptiveGroupNorm):
                module.style.float()

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        return self.generator(x.half(), t, z).float()


def export_chain(generator: NCSNpp, config: ModelConfig, precision: str) -> SamplingChain:
    """The module that is exported: the sampling chain around the fp32 or fp16 generator, on the CPU."""
    generator = generator.to("cpu").eval()
    if precision == "fp16":
        return SamplingChain(Float16Generator(generator), config.diffusion).eval()
    if precision != "fp32":
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    return SamplingChain(generator.float(), config.diffusion).eval()


def _example_inputs(config: ModelConfig, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    noise = chain_noise(image_seeds(0, batch), config.image_shape, config.generator.nz, config.diffusion.num_timesteps)
    return noise.x_T, noise.z, noise.noise


def batch_dims(onnx_model: object) -> dict[str, int | str]:
    """The batch dimension of each graph input/output: a name (str) if symbolic, else its fixed size."""
    graph = onnx_model.graph  # type: ignore[attr-defined]
    axis = {"x_T": 0, "z": 1, "noise": 1, OUTPUT_NAME: 0}
    dims: dict[str, int | str] = {}
    for value in [*graph.input, *graph.output]:
        dim = value.type.tensor_type.shape.dim[axis[value.name]]
        dims[value.name] = dim.dim_param if dim.dim_param else int(dim.dim_value)
    return dims


def assert_symbolic_batch(onnx_model: object) -> None:
    """Raise unless every input and the output have a symbolic batch dimension."""
    dims = batch_dims(onnx_model)
    fixed = {name: dim for name, dim in dims.items() if not isinstance(dim, str)}
    if fixed or set(dims) != {*INPUT_NAMES, OUTPUT_NAME}:
        raise ExportError(f"exported graph has a static batch dimension ({fixed or dims}); expected a symbolic one")


def _shapes(onnx_model: object) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    graph = onnx_model.graph  # type: ignore[attr-defined]

    def shape(value: object) -> list[int | str]:
        dims = value.type.tensor_type.shape.dim  # type: ignore[attr-defined]
        return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]

    return {v.name: shape(v) for v in graph.input}, {v.name: shape(v) for v in graph.output}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter warns about unrelated registries (torchvision ops) and deprecations; keep logs useful."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)


def trace_to_onnx(chain: SamplingChain, config: ModelConfig, path: Path, opset: int, max_batch: int) -> None:
    """Export with the dynamo exporter and a dynamic batch in [1, max_batch]; save as one file."""
    if max_batch < EXAMPLE_BATCH:
        raise ExportError(f"max batch must be >= {EXAMPLE_BATCH} (a dynamic batch needs an example batch >= 2)")
    batch = torch.export.Dim(BATCH_DIM, min=1, max=max_batch)
    dynamic_shapes = {"x_T": {0: batch}, "z": {1: batch}, "noise": {1: batch}}
    with _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                chain,
                _example_inputs(config, EXAMPLE_BATCH),
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many internal types; surface one clear error
            raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(path, external_data=False)


@dataclass(frozen=True)
class VerifyResult:
    """ONNX Runtime against torch over the verification images: raw and as 8-bit grey levels."""

    max_abs_error: float
    uint8_mean_levels: float
    uint8_p99_levels: float
    uint8_max_levels: float


def verify_onnx(
    path: Path, reference: SamplingChain, config: ModelConfig, batch_sizes: Sequence[int], seed: int | None = None
) -> VerifyResult:
    """|ONNX Runtime (CPU) - torch| over fresh seeded chain noise at each batch size."""
    session = ort_session(path)
    seed = random_seed() if seed is None else seed
    worst = 0.0
    offset = seed
    levels = []
    for batch in batch_sizes:
        noise = chain_noise(
            image_seeds(offset, batch), config.image_shape, config.generator.nz, config.diffusion.num_timesteps
        )
        offset += batch
        with torch.no_grad():
            expected = reference(*noise)
        feeds = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, noise, strict=True)}
        (actual,) = session.run([OUTPUT_NAME], feeds)
        error = float((torch.from_numpy(actual) - expected).abs().max())
        logger.info("verify batch %d (seeds %d..): max |onnxruntime - torch| = %.3g", batch, offset - batch, error)
        worst = max(worst, error)
        pixels = np.abs(to_uint8(torch.from_numpy(actual)).astype(np.int16) - to_uint8(expected).astype(np.int16))
        levels.append(pixels.reshape(-1))
    all_levels = np.concatenate(levels).astype(np.float64)
    return VerifyResult(worst, float(all_levels.mean()), float(np.quantile(all_levels, 0.99)), float(all_levels.max()))


def check_verification(result: VerifyResult, tolerance: float, fp16: bool) -> None:
    """ExportError unless the raw max is within `tolerance` and the 8-bit images within their precision's bound."""
    if not result.max_abs_error <= tolerance:
        raise ExportError(
            f"verification failed: max |onnxruntime - torch| = {result.max_abs_error:.3g} exceeds the tolerance "
            f"{tolerance:.1g}"
        )
    if not fp16 and not result.uint8_max_levels <= FP32_MAX_LEVELS:
        raise ExportError(
            f"verification failed: an 8-bit pixel differs by {result.uint8_max_levels:.0f} grey levels (bound "
            f"{FP32_MAX_LEVELS:g})"
        )
    if fp16 and not (result.uint8_mean_levels <= FP16_MEAN_LEVELS and result.uint8_p99_levels <= FP16_P99_LEVELS):
        raise ExportError(
            f"verification failed: 8-bit images differ by {result.uint8_mean_levels:.3g} grey levels on average "
            f"and {result.uint8_p99_levels:.0f} at the 99th percentile (bound {FP16_MEAN_LEVELS:g} and "
            f"{FP16_P99_LEVELS:g})"
        )


def tool_versions() -> dict[str, str]:
    versions: dict[str, str] = {"torch": str(torch.__version__)}
    for package in ("onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[package] = importlib_metadata.version(package)
    return versions


def _check_exportable(model_dir: Path) -> None:
    """ExportError in words for a directory that holds no DDGAN model (missing, a file, a DDPM directory)."""
    if not model_dir.exists():
        raise ExportError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise ExportError(f"--model must be a model directory, got the file {model_dir}")
    if is_ddpm_directory(model_dir):
        raise ExportError(
            f"{model_dir} is a DDPM (diffusers) model directory: ONNX export covers the DDGAN chain only; "
            "serve DDPM models with the torch backend"
        )


def export_onnx(
    model_dir: str | Path,
    output: str | Path,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    max_batch: int = 64,
    tolerance: float | None = None,
    verify_batches: Sequence[int] | None = None,
) -> OnnxMetadata:
    """Export, verify and atomically install `output` and `output.json`; nothing is written if a check fails."""
    import onnx

    model_dir, output = Path(model_dir), Path(output)
    _check_exportable(model_dir)
    precision = "fp16" if fp16 else "fp32"
    tolerance = (FP16_TOLERANCE if fp16 else FP32_TOLERANCE) if tolerance is None else tolerance
    verify_batches = verify_batches or (VERIFY_BATCHES_FP16 if fp16 else VERIFY_BATCHES)
    digest = weights_digest(model_dir)
    config, generator = load_model(model_dir, device="cpu")
    reference = export_chain(generator, config, "fp32")
    # The exported module gets its own copy so that halving it leaves the fp32 reference intact.
    exported = export_chain(copy.deepcopy(generator), config, precision)

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        logger.info(
            "exporting %s (%s, T=%d, opset %d) ...", model_dir, precision, config.diffusion.num_timesteps, opset
        )
        trace_to_onnx(exported, config, tmp, opset, max_batch)
        graph = onnx.load(str(tmp))
        assert_symbolic_batch(graph)
        inputs, outputs = _shapes(graph)
        result = verify_onnx(tmp, reference, config, verify_batches)
        logger.info(
            "max |onnxruntime - torch fp32| = %.3g (tolerance %.1g); 8-bit grey levels: mean %.3g, 99%% %.0f, max "
            "%.0f", result.max_abs_error, tolerance, result.uint8_mean_levels, result.uint8_p99_levels,
            result.uint8_max_levels,
        )  # fmt: skip
        check_verification(result, tolerance, fp16)
        metadata = OnnxMetadata(
            file=output.name,
            sha256=file_sha256(tmp),
            precision=precision,
            io_dtype="float32",
            opset=opset,
            num_timesteps=config.diffusion.num_timesteps,
            image_shape=config.image_shape,
            nz=config.generator.nz,
            inputs=inputs,
            outputs=outputs,
            batch_min=1,
            batch_max=max_batch,
            example_batch=EXAMPLE_BATCH,
            weights_digest=digest,
            model_config=config.to_dict(),
            verification=Verification(
                "onnxruntime CPUExecutionProvider",
                tuple(verify_batches),
                result.max_abs_error,
                tolerance,
                result.uint8_mean_levels,
                result.uint8_p99_levels,
                result.uint8_max_levels,
            ),
            versions=tool_versions(),
        )
        make_readable(tmp)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_metadata(output, metadata)
    return metadata


def check_onnx_file(path: str | Path) -> None:
    """Structural check of an exported graph (onnx.checker + symbolic batch), for tests and loaders."""
    import onnx

    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model: {exc}") from exc
    assert_symbolic_batch(graph)
