"""DDPM baseline model directories (diffusers format): find, load, save and build the UNet and its schedule.

Directories are diffusers format, either as `save_pretrained` writes a pipeline (`unet/` + `scheduler/`, what
`save_ddpm` writes, plus our `ddpm.json`) or as the Hub stores a bare UNet repository such as
google/ddpm-celebahq-256 (`config.json` + weights + `scheduler_config.json`). Weights load from safetensors; a
legacy `.bin` is only accepted after `torch.load(weights_only=True)` has checked that it holds nothing but
tensors. The sampler itself is `ddgan.model.ddpm.DDPMSampler`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

from ddgan.model.checkpoint import CheckpointError, atomic_write_bytes, file_sha256, make_readable
from ddgan.model.config import DictConfig
from ddgan.model.file_checks import safetensors_problem, torch_file_problem

logger = logging.getLogger(__name__)

META_FILE = "ddpm.json"
META_FORMAT = "ddgan-ddpm-baseline"
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"

# UNet architectures for speed work with random weights. `cifar10` and `celebahq` are the architectures of
# google/ddpm-cifar10-32 and google/ddpm-celebahq-256 (35.7 M / 113.7 M parameters); `tiny` is for tests.
UNET_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "sample_size": 32,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
    },
    "celebahq": {
        "sample_size": 256,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        "layers_per_block": 2,
    },
    "tiny": {
        "sample_size": 16,
        "block_out_channels": (16, 32),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
}
# What the google checkpoints share (DDPM's original UNet as diffusers expresses it).
_UNET_COMMON: dict[str, Any] = {
    "freq_shift": 1,
    "flip_sin_to_cos": False,
    "downsample_padding": 0,
    "norm_eps": 1e-6,
    "attention_head_dim": None,
}


@dataclass(frozen=True)
class DDPMConfig(DictConfig):
    """What a DDPM model directory is: provenance from `ddpm.json` plus the shape facts of its UNet/scheduler."""

    num_channels: int
    image_size: int
    num_train_timesteps: int
    default_steps: int
    dataset: str = ""
    trained_on: str = ""
    layout: str = "pipeline"  # "pipeline" (unet/ + scheduler/) or "hub-unet" (top-level config.json)
    preset: str = "ddpm"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class DDPMLayout:
    """Where a directory keeps its UNet (a folder with config.json + weights) and its scheduler config."""

    unet_dir: Path
    scheduler_config: Path
    name: str


def find_ddpm_layout(directory: str | Path) -> DDPMLayout | None:
    """The DDPM layout of `directory`, or None when it is not a diffusers UNet directory."""
    directory = Path(directory)
    pipeline_unet = directory / "unet" / UNET_CONFIG
    if pipeline_unet.is_file():
        return DDPMLayout(directory / "unet", directory / "scheduler" / SCHEDULER_CONFIG, "pipeline")
    top_level = directory / UNET_CONFIG
    try:
        is_unet = top_level.is_file() and _json_object(top_level).get("_class_name") == "UNet2DModel"
    except CheckpointError:  # unreadable: not recognisably DDPM; the DDGAN loader reports the bad file
        is_unet = False
    return DDPMLayout(directory, directory / SCHEDULER_CONFIG, "hub-unet") if is_unet else None


def is_ddpm_directory(directory: str | Path) -> bool:
    return Path(directory).is_dir() and find_ddpm_layout(directory) is not None


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _check_weights_are_plain_tensors(unet_dir: Path) -> bool:
    """True for safetensors; refuse a `.bin` that is not a plain tensor state_dict before diffusers opens it."""
    weights = unet_dir / SAFETENSORS_WEIGHTS
    if weights.is_file():
        if (problem := safetensors_problem(weights)) is not None:
            raise CheckpointError(f"cannot read {weights}: {problem}")
        return True
    legacy = unet_dir / PICKLE_WEIGHTS
    if not legacy.is_file():
        raise CheckpointError(f"{unet_dir} has no UNet weights ({SAFETENSORS_WEIGHTS} or {PICKLE_WEIGHTS})")
    if (problem := torch_file_problem(legacy)) is not None:
        raise CheckpointError(f"cannot read {legacy}: {problem}")
    try:
        state_dict = torch.load(legacy, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"refusing {legacy}: not a plain tensor state_dict (torch.load(weights_only=True) rejected it: {exc}). "
            f"Convert a trusted copy to {SAFETENSORS_WEIGHTS} with safetensors.torch.save_file."
        ) from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{legacy} does not hold a UNet state_dict (a mapping of names to tensors)")
    logger.warning("%s is a pickle-based .bin (checked with weights_only=True); prefer safetensors", legacy)
    return False


def _load_unet(unet_dir: Path, use_safetensors: bool) -> UNet2DModel:
    try:
        unet, info = UNet2DModel.from_pretrained(
            unet_dir,
            local_files_only=True,
            use_safetensors=use_safetensors,
            low_cpu_mem_usage=False,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"cannot load a diffusers UNet2DModel from {unet_dir}: {exc}") from exc
    problems = [
        f"{label.replace('_', ' ')}: {', '.join(str(k) for k in list(info[label])[:8])}"
        for label in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(label)
    ]
    if problems:
        raise CheckpointError(f"UNet weights in {unet_dir} do not match its config.json: {'; '.join(problems)}")
    # Fresh allocations: the loader may leave tensors in its (mmap) buffers at arbitrary offsets, and CPU
    # kernels round differently by alignment, so the same weights would give other bits per file format.
    for tensor in [*unet.parameters(), *unet.buffers()]:
        tensor.data = tensor.data.clone()
    return unet.eval()


def _load_scheduler_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no scheduler config at {path}: the DDPM noise schedule is unknown")
    config = _json_object(path)
    kind = config.get("_class_name", "DDPMScheduler")
    if kind != "DDPMScheduler":
        logger.info("%s describes a %s; sampling with ancestral DDPM over its beta schedule", path, kind)
    try:
        scheduler = DDPMScheduler.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise CheckpointError(f"{path} is not a usable DDPM scheduler config: {exc}") from exc
    return dict(scheduler.config)


@dataclass(frozen=True)
class DDPMWeights:
    """A loaded DDPM directory: the UNet (CPU, eval mode), its scheduler config and what the directory says."""

    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    config: DDPMConfig
    digest: str  # sha256 of the UNet weights file


def load_ddpm_directory(directory: str | Path) -> DDPMWeights:
    """Load a diffusers-format DDPM directory (ours or a Hub UNet repository's local copy)."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"model directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"not a directory: {directory}")
    layout = find_ddpm_layout(directory)
    if layout is None:
        raise CheckpointError(
            f"{directory} is not a DDPM model directory: expected unet/{UNET_CONFIG} + scheduler/{SCHEDULER_CONFIG} "
            f"(diffusers save_pretrained) or a top-level UNet2DModel {UNET_CONFIG} + {SCHEDULER_CONFIG}"
        )
    scheduler_config = _load_scheduler_config(layout.scheduler_config)
    use_safetensors = _check_weights_are_plain_tensors(layout.unet_dir)
    unet = _load_unet(layout.unet_dir, use_safetensors)
    meta = _json_object(directory / META_FILE) if (directory / META_FILE).is_file() else {}
    weights = layout.unet_dir / (SAFETENSORS_WEIGHTS if use_safetensors else PICKLE_WEIGHTS)
    config = describe(unet, scheduler_config, meta, layout.name)
    return DDPMWeights(unet, scheduler_config, config, file_sha256(weights))


def describe(unet: UNet2DModel, scheduler_config: dict[str, Any], meta: dict[str, Any], layout: str) -> DDPMConfig:
    size = unet.config.sample_size
    if not isinstance(size, int):
        if len(set(size)) != 1:
            raise CheckpointError(f"only square images are supported, the UNet's sample_size is {size}")
        size = int(size[0])
    if unet.config.out_channels != unet.config.in_channels:
        raise CheckpointError(
            f"the UNet predicts {unet.config.out_channels} channels for {unet.config.in_channels} input channels; "
            "only epsilon/sample/v prediction without learned variance is supported"
        )
    train_steps = int(scheduler_config["num_train_timesteps"])
    default_steps = int(meta.get("default_steps", train_steps))
    if not 1 <= default_steps <= train_steps:
        raise CheckpointError(f"{META_FILE}: default_steps must be in 1..{train_steps}, got {default_steps}")
    return DDPMConfig(
        num_channels=int(unet.config.in_channels),
        image_size=int(size),
        num_train_timesteps=train_steps,
        default_steps=default_steps,
        dataset=str(meta.get("dataset", "")),
        trained_on=str(meta.get("trained_on", "")),
        layout=layout,
    )


def save_ddpm(
    directory: str | Path,
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    dataset: str = "",
    trained_on: str = "",
    default_steps: int | None = None,
) -> Path:
    """Write a pipeline-layout directory (`unet/`, `scheduler/`, `model_index.json`, `ddpm.json`).

    Everything is written into a temporary sibling first and then moved into place, so readers never see a
    half-written model; diffusers' `DDPMPipeline.from_pretrained` can also open the result.
    """
    directory = Path(directory)
    steps = int(default_steps or scheduler.config.num_train_timesteps)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        unet.save_pretrained(staging / "unet", safe_serialization=True)
        scheduler.save_pretrained(staging / "scheduler")
        index = {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"]}
        index["unet"] = ["diffusers", "UNet2DModel"]
        meta = {"format": META_FORMAT, "dataset": dataset, "trained_on": trained_on, "default_steps": steps}
        atomic_write_bytes(staging / "model_index.json", (json.dumps(index, indent=2) + "\n").encode())
        atomic_write_bytes(staging / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        make_readable(staging)  # mkdtemp and safetensors create 0700 / 0600 entries
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(target, retired)
    os.replace(new, target)
    shutil.rmtree(retired, ignore_errors=True)


def build_unet(architecture: str = "tiny", num_channels: int = 3, seed: int = 0, **overrides: Any) -> UNet2DModel:
    """A randomly initialised UNet of a named architecture (see `UNET_ARCHITECTURES`), reproducible by seed."""
    if architecture not in UNET_ARCHITECTURES:
        raise ValueError(f"unknown DDPM architecture {architecture!r}; choose one of {sorted(UNET_ARCHITECTURES)}")
    kwargs = {**_UNET_COMMON, **UNET_ARCHITECTURES[architecture], **overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(in_channels=num_channels, out_channels=num_channels, **kwargs).eval()


def linear_scheduler_config(num_train_timesteps: int = 1000) -> dict[str, Any]:
    """DDPM's own schedule (linear β from 1e-4 to 0.02, x_0 clipped): what random-weights baselines use."""
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", clip_sample=True)
    return dict(scheduler.config)
