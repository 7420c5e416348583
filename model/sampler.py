"""`open_sampler`: the one factory of samplers, and the registry of DDGAN chain backends.

Every sampler in the project (the CLI's, the server's, the evaluator's, the benchmarks') is built here, from a
model directory (DDGAN: `config.json` + `generator.safetensors`; DDPM: a diffusers directory) or, with random
weights, from a preset. Everything that shapes a sampler is an argument; the result never changes afterwards.
Backends register themselves with `register_backend`: the torch ones (`ddgan.model.torch_backends`) here, the
exporters' (ONNX Runtime, TensorRT, ...) when the composing program calls `ddgan.export.backends.register()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ddgan.model.chain import BackendSpec, ChainRequest
from ddgan.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_config,
    load_model,
    tensors_digest,
    weights_digest,
)
from ddgan.model.config import PRESETS, ConfigError, ModelConfig, get_preset
from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.ddpm import DDPMSampler, ddpm_info
from ddgan.model.ddpm_io import (
    UNET_ARCHITECTURES,
    build_unet,
    describe,
    is_ddpm_directory,
    linear_scheduler_config,
    load_ddpm_directory,
)
from ddgan.model.dtypes import AUTO, resolve_dtype
from ddgan.model.ncsnpp import NCSNpp
from ddgan.model.sampling import (
    TORCH_DTYPES,
    Progress,
    Sampler,
    SamplerError,
    SamplerInfo,
    SamplerKind,
    SamplingStoppedError,
    StepsError,
    WeightsNotFoundError,
)
from ddgan.model.torch_backends import TORCH_BACKENDS

__all__ = [
    "Progress",
    "Sampler",
    "SamplerError",
    "SamplerInfo",
    "SamplerKind",
    "SamplingStoppedError",
    "StepsError",
    "WeightsNotFoundError",
    "backend_availability",
    "backends_of",
    "model_installed",
    "open_sampler",
    "register_backend",
    "registered_backends",
    "resolve_device",
]

_BACKENDS: dict[str, BackendSpec] = {}
EXPORT_HINT = "the export backends register when the export extra is installed: pip install -e '.[export]'"


def register_backend(spec: BackendSpec) -> None:
    """Make a chain backend available by name (registering the same name again replaces it)."""
    _BACKENDS[spec.name] = spec


def registered_backends() -> dict[str, BackendSpec]:
    return dict(_BACKENDS)


for _spec in TORCH_BACKENDS:
    register_backend(_spec)


def backends_of(kind: SamplerKind) -> tuple[str, ...]:
    """The backends a kind of sampler runs on: any registered chain backend for DDGAN, torch for the DDPM."""
    return tuple(sorted(_BACKENDS)) if kind == "ddgan" else ("torch",)


def backend_availability(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Each registered backend -> None if it can run on `device` here, else the reason it cannot."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return dict.fromkeys(_BACKENDS, "CUDA is not available in this process")
    return {name: spec.unavailable(device) for name, spec in _BACKENDS.items()}


def model_installed(model_dir: str | Path) -> bool:
    """A cheap look at the filesystem: does `model_dir` hold a DDGAN or DDPM model's files at all?"""
    directory = Path(model_dir)
    ddgan = (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()
    return ddgan or is_ddpm_directory(directory)


def resolve_device(requested: str) -> str:
    """`auto` is the first CUDA device when there is one, else the CPU; an unavailable device is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise SamplerError(f"invalid device {requested!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SamplerError(f"device {requested!r} requested but CUDA is not available in this process")
        if (device.index or 0) >= torch.cuda.device_count():
            raise SamplerError(f"device {requested!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SamplerError("device 'mps' requested but it is not available")
    elif device.type not in ("cpu", "mps"):
        raise SamplerError(f"unsupported device {requested!r}: use cpu, cuda, cuda:N, mps or auto")
    return requested


def open_sampler(
    model_dir: str | Path | None = None,
    *,
    preset: str | None = None,
    kind: SamplerKind | None = None,
    dataset: str | None = None,
    backend: str = "torch",
    device: str = "cpu",
    dtype: str = "float32",
    micro_batch: int | None = None,
    random_weights: bool = False,
    default_steps: int | None = None,
    max_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Sampler:
    """A ready sampler.

    - `model_dir`: a DDGAN or DDPM directory (the kind is detected; `kind`, if given, must agree). With
      `random_weights`, the directory's architecture re-initialised when it exists, else the `preset`
      architecture (a DDGAN preset, or for `kind="ddpm"` a `ddpm_io.UNET_ARCHITECTURES` name whose image shape
      is that of the DDGAN preset named `dataset`, when there is one).
    - `backend` (DDGAN only; the DDPM runs on `torch`), `device` (`auto`, `cpu`, `cuda[:N]`), `dtype`
      (`float32`, `float16`, `bfloat16`, or `auto`: `ddgan.model.dtypes`, the result in `info.dtype`),
      `micro_batch` (every forward pass runs exactly that many rows),
      `default_steps` / `max_steps` (DDPM: the steps of a call that names none, and the most it may name),
      `options`: the backend's keyword options.
    Raises `WeightsNotFoundError` when the weights are not on disk, `SamplerError` for anything else.
    """
    if micro_batch is not None and micro_batch < 1:
        raise SamplerError(f"micro_batch must be >= 1, got {micro_batch}")
    if dtype != AUTO and dtype not in TORCH_DTYPES:
        raise SamplerError(f"unknown dtype {dtype!r}; choose one of {', '.join(TORCH_DTYPES)} or auto")
    directory = Path(model_dir) if model_dir is not None else None
    installed = directory is not None and directory.is_dir()
    if directory is not None and not installed and not random_weights:
        raise WeightsNotFoundError(f"model directory not found: {directory}")
    if directory is None and not random_weights:
        raise SamplerError("give a model directory, or a preset with random weights")
    detected: SamplerKind | None = None
    if installed:
        assert directory is not None
        detected = "ddpm" if is_ddpm_directory(directory) else "ddgan"
    if kind is not None and detected is not None and kind != detected:
        raise SamplerError(f"{directory} holds a {detected.upper()} model, not a {kind.upper()} one")
    resolved = resolve_device(device)
    try:
        if (kind or detected or "ddgan") == "ddpm":
            dtype = resolve_dtype(dtype, torch.device(resolved), tuple(TORCH_DTYPES))
            if backend not in backends_of("ddpm") or options:
                raise SamplerError("the DDPM baseline runs on backend 'torch' only, without backend options")
            return _open_ddpm(
                directory if installed else None, preset, dataset, resolved, dtype, micro_batch, random_weights,
                default_steps, max_steps,
            )  # fmt: skip
        return _open_ddgan(
            directory, installed, preset, dataset, backend, resolved, dtype, micro_batch, random_weights, options or {}
        )
    except (CheckpointError, ConfigError) as exc:
        raise SamplerError(str(exc)) from None


def _open_ddgan(
    directory: Path | None,
    installed: bool,
    preset: str | None,
    dataset: str | None,
    backend: str,
    device: str,
    dtype: str,
    micro_batch: int | None,
    random_weights: bool,
    options: Mapping[str, Any],
) -> DDGANSampler:
    spec = _BACKENDS.get(backend)
    if spec is None:
        raise SamplerError(f"unknown backend {backend!r}; registered: {', '.join(sorted(_BACKENDS))} ({EXPORT_HINT})")
    dtype = resolve_dtype(dtype, torch.device(device), spec.dtypes)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise SamplerError(f"backend {backend!r} has no option {', '.join(unknown)} (accepted: {accepted})")
    if dtype not in spec.dtypes:
        raise SamplerError(f"backend {backend!r} computes in {', '.join(spec.dtypes)}, not {dtype}")
    reason = spec.unavailable(torch.device(device))
    if reason is not None:
        raise SamplerError(f"backend {backend!r} cannot run on {device}: {reason}")
    if random_weights and not spec.random_weights:
        raise SamplerError(f"backend {backend!r} runs exported weights only; random weights run on 'torch'")
    config = _ddgan_config(directory, installed, preset, random_weights)
    if dataset:
        config = config.replace(dataset=dataset)
    if installed and not random_weights:
        assert directory is not None
        if not (directory / WEIGHTS_FILE).is_file():
            raise WeightsNotFoundError(f"{directory} has no {WEIGHTS_FILE}")
    generator, digest = _generator_source(directory if installed else None, config, random_weights)
    request = ChainRequest(
        config=config,
        device=torch.device(device),
        dtype=TORCH_DTYPES[dtype],
        options=dict(options),
        model_dir=directory if installed else None,
        random_weights=random_weights,
        load_generator=generator,
    )
    try:
        run_chain = spec.build(request)
    except (SamplerError, CheckpointError, ConfigError):
        raise
    except (RuntimeError, OSError, ValueError, ImportError) as exc:  # a backend's own error types
        raise SamplerError(f"backend {backend!r} cannot load {directory or config.preset}: {exc}") from exc
    steps = config.diffusion.num_timesteps
    info = SamplerInfo(
        kind="ddgan",
        dataset=config.dataset,
        image_shape=config.image_shape,
        default_steps=steps,
        min_steps=steps,
        max_steps=steps,
        backend=backend,
        device=device,
        dtype=dtype,
        micro_batch=micro_batch,
        random_weights=random_weights,
        weights_digest=digest(),
    )
    return DDGANSampler(config, run_chain, info)


def _ddgan_config(directory: Path | None, installed: bool, preset: str | None, random_weights: bool) -> ModelConfig:
    if installed:
        assert directory is not None
        if not (directory / CONFIG_FILE).is_file():
            raise SamplerError(
                f"{directory} is not a model directory: expected a DDGAN model ({CONFIG_FILE} + {WEIGHTS_FILE}, "
                "see ddgan convert) or a diffusers DDPM (unet/ + scheduler/)"
            )
        return load_config(directory)
    if preset is None:
        raise SamplerError("random weights need an architecture: an installed model directory or a preset")
    if preset not in PRESETS:
        raise SamplerError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return get_preset(preset)


def _generator_source(directory: Path | None, config: ModelConfig, random_weights: bool) -> tuple[Any, Any]:
    """(load the generator, its weights digest), both lazy: exported backends never need the torch weights."""
    cache: dict[str, NCSNpp] = {}

    def load() -> NCSNpp:
        if "net" not in cache:
            if random_weights:
                cache["net"] = random_generator(config)
            else:
                assert directory is not None
                cache["net"] = load_model(directory, device="cpu")[1]
        return cache["net"]

    def digest() -> str:
        if random_weights:
            return tensors_digest(load().state_dict())
        assert directory is not None
        return weights_digest(directory)

    return load, digest


def random_generator(config: ModelConfig, seed: int = 0) -> NCSNpp:
    """An untrained generator with reproducible weights: for speed work only, never for real images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NCSNpp(config.generator).eval()


def _open_ddpm(
    directory: Path | None,
    preset: str | None,
    dataset: str | None,
    device: str,
    dtype: str,
    micro_batch: int | None,
    random_weights: bool,
    default_steps: int | None,
    max_steps: int | None,
) -> DDPMSampler:
    if directory is not None:
        weights = load_ddpm_directory(directory)
        unet, scheduler_config, config, digest = weights.unet, weights.scheduler_config, weights.config, weights.digest
        if random_weights:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                unet = type(unet).from_config(unet.config).eval()
            digest = tensors_digest(unet.state_dict())
    else:
        if preset not in UNET_ARCHITECTURES:
            raise SamplerError(
                f"no random-weights DDPM architecture {preset!r}; choose one of {', '.join(sorted(UNET_ARCHITECTURES))}"
            )
        channels, size = 3, None
        if dataset in PRESETS:
            channels, size, _ = PRESETS[dataset].image_shape
        unet = build_unet(preset, channels, **({} if size is None else {"sample_size": size}))
        scheduler_config = linear_scheduler_config()
        config = describe(unet, scheduler_config, {"dataset": dataset or ""}, "random")
        digest = tensors_digest(unet.state_dict())
    if dataset:
        config = dataclasses.replace(config, dataset=dataset)
    if default_steps is not None and not 1 <= default_steps <= config.num_train_timesteps:
        raise StepsError(f"default_steps must be in 1..{config.num_train_timesteps}, got {default_steps}")
    info = ddpm_info(
        config,
        device=device,
        dtype=dtype,
        weights_digest=digest,
        micro_batch=micro_batch,
        random_weights=random_weights,
        default_steps=default_steps,
        max_steps=max_steps,
    )
    return DDPMSampler(unet, scheduler_config, info)
