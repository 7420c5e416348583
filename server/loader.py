"""Turning a registry entry into a ready sampler, or into a precise reason why it cannot serve.

DDGAN on backend `torch` loads through `model.sampler`; other backends come from `export.backends` (imported
lazily: it is optional). The DDPM baseline loads through `model.ddpm`. Missing weights are `ModelNotInstalledError`
(answered 404 with the install command); anything else that stops a model is `ModelLoadError` (503, with reason).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ddgan.server.registry import ModelEntry

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Sampler(Protocol):
    """What the server needs of a sampler (DDGANSampler, DDPMSampler, or a backend's)."""

    @property
    def steps(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def sample(self, seeds: list[int]) -> Tensor: ...


class ModelUnavailableError(Exception):
    """A configured model cannot serve; `reason` is shown to clients and in /v1/models."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelNotInstalledError(ModelUnavailableError):
    """The weights are not on disk: the fix is the install command."""


class ModelLoadError(ModelUnavailableError):
    """Weights exist (or were not needed) but loading, the device or the backend failed."""


@dataclass(frozen=True)
class LoadedModel:
    sampler: Any  # a Sampler; DDPM samplers also take `steps=`
    backend: str
    device: str
    dtype: str
    random_weights: bool


def resolve_device(requested: str) -> str:
    """`auto` is the first CUDA device when there is one, else the CPU; an unavailable CUDA is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} requested but CUDA is not available in this process")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {requested!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' requested but it is not available")
    return requested


def load_entry(
    entry: ModelEntry, *, random_weights: bool = False, device: str | None = None, backend: str | None = None
) -> LoadedModel:
    """Load one registry entry; `device`/`backend` override the entry's (settings `DDGAN_DEVICE`, ...)."""
    resolved = resolve_device(device or entry.device)
    dtype = TORCH_DTYPES[entry.dtype]
    if entry.sampler == "ddpm":
        chosen_backend = "torch"
        sampler = _load_ddpm(entry, resolved, dtype, random_weights)
    else:
        chosen_backend = backend or entry.backend
        sampler = _load_ddgan(entry, chosen_backend, resolved, dtype, random_weights)
    # Kernels choose algorithms by batch shape, so only one fixed forward size makes a seed's image independent
    # of what it was batched with (model.sampler pads partial batches to it).
    sampler.fixed_batch = entry.max_batch_images if entry.batch_invariant else None
    return LoadedModel(sampler, chosen_backend, resolved, entry.dtype, random_weights)


def not_installed_reason(entry: ModelEntry) -> str:
    return f"weights for {entry.name} are not installed at {entry.path}; install them with: {entry.install_hint()}"


def weights_present(entry: ModelEntry) -> bool:
    """A cheap look at the filesystem (no imports): are this entry's weights there at all?"""
    if entry.sampler == "ddpm":
        return (entry.path / "unet" / "config.json").is_file() or (entry.path / "config.json").is_file()
    return _ddgan_installed(entry.path)


def _ddgan_installed(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "generator.safetensors").is_file()


def _load_ddgan(entry: ModelEntry, backend: str, device: str, dtype: torch.dtype, random_weights: bool) -> Any:
    from ddgan.model.checkpoint import CheckpointError, load_config
    from ddgan.model.config import ConfigError, get_preset
    from ddgan.model.sampler import load_ddgan_sampler, random_weights_sampler

    if random_weights:
        if backend != "torch":
            raise ModelLoadError(f"--random-weights runs on backend 'torch' only (registry says {backend!r})")
        try:
            # The installed architecture when there is one, else the preset's.
            config = load_config(entry.path) if (entry.path / "config.json").is_file() else None
            config = config or get_preset(entry.preset or entry.dataset)
        except (CheckpointError, ConfigError) as exc:
            raise ModelLoadError(f"no architecture for random weights: {exc}") from exc
        return random_weights_sampler(config, device, dtype)
    if not _ddgan_installed(entry.path):
        raise ModelNotInstalledError(not_installed_reason(entry))
    if backend == "torch" and not entry.backend_options:
        try:
            return load_ddgan_sampler(entry.path, device, dtype)
        except (CheckpointError, ConfigError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {entry.path}: {exc}") from exc
    try:
        backends = importlib.import_module("ddgan.export.backends")
    except ImportError as exc:
        raise ModelLoadError(f"backend {backend!r} needs export.backends, which cannot be imported: {exc}") from exc
    try:
        return backends.load_sampler(entry.path, backend=backend, device=device, dtype=dtype, **entry.backend_options)
    except Exception as exc:  # backends raise their own types (missing artifact, stale engine, no TensorRT)
        raise ModelLoadError(f"backend {backend!r} unavailable for {entry.path}: {exc}") from exc


def _load_ddpm(entry: ModelEntry, device: str, dtype: torch.dtype, random_weights: bool) -> Any:
    try:
        ddpm = importlib.import_module("ddgan.model.ddpm")
    except ImportError as exc:
        raise ModelLoadError(f"the DDPM baseline needs model.ddpm, which cannot be imported: {exc}") from exc
    installed = ddpm.is_ddpm_directory(entry.path)
    if random_weights:
        return _random_ddpm(ddpm, entry, device, dtype, installed)
    if not installed:
        raise ModelNotInstalledError(not_installed_reason(entry))
    try:
        return ddpm.load_ddpm_sampler(entry.path, device, dtype)
    except Exception as exc:  # CheckpointError, or diffusers' OSError/ValueError for a damaged directory
        raise ModelLoadError(f"cannot load the DDPM baseline at {entry.path}: {exc}") from exc


def _random_ddpm(ddpm: Any, entry: ModelEntry, device: str, dtype: torch.dtype, installed: bool) -> Any:
    """The installed UNet's architecture re-initialised, else the named `preset` architecture of model.ddpm."""
    from diffusers import UNet2DModel

    try:
        if installed:
            sampler = ddpm.load_ddpm_sampler(entry.path, device, dtype)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                unet = UNet2DModel.from_config(sampler.unet.config)
            sampler.unet = unet.to(device=sampler.device, dtype=sampler.dtype).eval()
            sampler.random_weights = True
            return sampler
        architecture = entry.preset or entry.dataset
        if architecture not in ddpm.UNET_ARCHITECTURES:
            raise ModelLoadError(
                f"{entry.name} is not installed and has no random-weights architecture: set preset to one of "
                f"{sorted(ddpm.UNET_ARCHITECTURES)} in the registry"
            )
        channels, size = _dataset_shape(entry.dataset)
        return ddpm.random_weights_ddpm(
            architecture, num_channels=channels, image_size=size, default_steps=entry.default_steps,
            device=device, dtype=dtype,
        )  # fmt: skip
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build a random-weights DDPM for {entry.name}: {exc}") from exc


def _dataset_shape(dataset: str) -> tuple[int, int | None]:
    """Channels and resolution of a dataset, from the DDGAN preset of the same name when there is one."""
    from ddgan.model.config import PRESETS

    if dataset not in PRESETS:
        return 3, None
    channels, size, _ = PRESETS[dataset].image_shape
    return channels, size
