"""The DDPM baseline's training recipe (`ddgan train-ddpm`): one frozen dataclass and the named presets.

The loop fields (`max_steps`, checkpoint and sample cadence, ...) are the shared `LoopConfig`'s; the resolved
recipe is written into every run as `train_config.json` and is what `--resume` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ddgan.model.config import ConfigError
from ddgan.training.train_config import DATASET_KINDS, LoopConfig


@dataclass(frozen=True, kw_only=True)
class DDPMTrainConfig(LoopConfig):  # the defaults are the `mnist` recipe
    """Everything that defines a DDPM training run besides the data and output paths."""

    preset: str = "mnist"  # the recipe the fields started from (provenance)
    dataset_kind: str = "auto"
    image_size: int = 32
    channels: int = 1
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()  # indices into block_out_channels that get self-attention
    norm_num_groups: int = 8
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4  # DDPM's linear schedule, β_1 .. β_T
    beta_end: float = 0.02
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    hflip: bool = False
    seed: int = 0
    dataset_name: str = "mnist"  # what the model is of; the server's `dataset` label
    sample_steps: int = 100  # denoising steps of the periodic sample grids
    final_sample_steps: int = 1000  # denoising steps of the grid of a finished run (0: none)
    # the loop's defaults for this recipe: a step count (there are no epochs) and time-based checkpoints
    max_steps: int | None = 10_000
    checkpoint_minutes: float = 5.0
    sample_every: int = 2000

    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"sample_steps", "final_sample_steps"})

    def __post_init__(self) -> None:
        super().__post_init__()
        levels = len(self.block_out_channels)
        if self.max_steps is None:
            raise ConfigError("a DDPM run needs max_steps (it has no epochs)")
        if levels < 1 or self.image_size % (2 ** (levels - 1)):
            raise ConfigError(f"image_size {self.image_size} must be divisible by 2^{levels - 1} ({levels} levels)")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels {self.block_out_channels} must divide by {self.norm_num_groups}")
        if any(not 0 <= level < levels for level in self.attention_levels):
            raise ConfigError(f"attention_levels {self.attention_levels} must index block_out_channels")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ConfigError("batch_size must be >= 1, lr > 0 and ema_decay in [0, 1)")
        if self.dataset_kind not in DATASET_KINDS:
            raise ConfigError(f"dataset_kind must be one of {DATASET_KINDS}, got {self.dataset_kind!r}")
        if self.channels not in (1, 3) or self.sample_steps < 1 or self.final_sample_steps < 0:
            raise ConfigError("channels must be 1 or 3, sample_steps >= 1 and final_sample_steps >= 0")


# Named recipes (`ddgan train-ddpm --preset NAME`); flags override single fields.
DDPM_PRESETS: dict[str, dict[str, Any]] = {
    # The bundled baseline: small enough to train in about an hour on 2 shared CPU cores (0.64 M parameters).
    "mnist": {},
    "stacked_mnist": {
        "dataset_kind": "stacked_mnist",
        "channels": 3,
        "block_out_channels": (32, 64, 64),
        "dataset_name": "stacked_mnist",
    },
    # DDPM's CIFAR-10 model and recipe (35.7 M parameters, google/ddpm-cifar10-32): attention at 16×16,
    # dropout 0.1, batch 128, lr 2e-4 with 5000 warm-up steps, EMA 0.9999, random flips, 800k steps.
    "cifar10": {
        "channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "attention_levels": (1,),
        "norm_num_groups": 32,
        "dropout": 0.1,
        "batch_size": 128,
        "lr": 2e-4,
        "warmup_steps": 5000,
        "ema_decay": 0.9999,
        "hflip": True,
        "max_steps": 800_000,
        "dataset_name": "cifar10",
    },
}


def preset_config(name: str, **overrides: Any) -> DDPMTrainConfig:
    """The recipe `name` with `overrides` (None values are ignored)."""
    if name not in DDPM_PRESETS:
        raise ConfigError(f"unknown DDPM preset {name!r}; choose one of {', '.join(sorted(DDPM_PRESETS))}")
    values = {**DDPM_PRESETS[name], "preset": name, **{k: v for k, v in overrides.items() if v is not None}}
    return DDPMTrainConfig(**values)
