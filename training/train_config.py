"""The training recipe: one frozen dataclass, with the official per-dataset defaults (ddgan-spec §2.2, §5).

`recipe_for(preset, objective)` gives the defaults; `TrainConfig.replace(**overrides)` applies flags; the resolved
recipe is written into every run as `train_config.json` and is what `--resume` reads back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ddgan.model.config import ConfigError, ModelConfig, get_preset
from ddgan.training.discriminator import DiscriminatorConfig

OBJECTIVES = ("ddgan", "siddm")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the data and output paths."""

    model: ModelConfig
    objective: str = "ddgan"
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    dataset: str = "auto"  # training.data kind: auto, mnist, stacked_mnist, image_folder, cifar10, lmdb
    hflip: bool = False
    batch_size: int = 64  # per process, as the official --batch_size
    num_epochs: int = 1800
    max_steps: int = 0  # 0: run all epochs; otherwise stop after this many steps
    time_limit_minutes: float = 0.0  # 0: none; otherwise checkpoint, export and stop after this long
    lr_g: float = 1.6e-4
    lr_d: float = 1.25e-4
    beta1: float = 0.5
    beta2: float = 0.9
    lr_decay: bool = True  # cosine over epochs to lr_min, stepped once per epoch
    lr_min: float = 1e-5
    ema_decay: float = 0.9999
    r1_gamma: float = 0.02
    lazy_reg: int = 15  # R1 every `lazy_reg` steps (1: every step)
    lambda_afd: float = 1.0  # SIDDM only
    denoise_weight: float = 1.0  # SIDDM only: the discriminator's denoising regulariser
    seed: int = 1024
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    num_workers: int = 0
    num_threads: int = 0  # CPU: torch.set_num_threads (0: torch's default)
    checkpoint_every: int = 1000  # steps
    keep_checkpoints: int = 3
    sample_every: int = 1000  # steps; EMA sample grid PNG + TensorBoard image
    log_every: int = 50  # steps; TensorBoard scalars
    sample_count: int = 64
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.objective == "siddm" and (self.discriminator.conditional or not self.discriminator.dense_heads):
            raise ConfigError("the siddm objective needs an unconditional discriminator with dense heads")
        if self.objective == "ddgan" and (not self.discriminator.conditional or self.discriminator.dense_heads):
            raise ConfigError("the ddgan objective needs a conditional discriminator without dense heads")
        positive = ("batch_size", "num_epochs", "lazy_reg", "checkpoint_every", "sample_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.lr_g, self.lr_d) <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("learning rates must be positive and Adam betas in [0, 1)")
        if min(self.r1_gamma, self.lambda_afd, self.denoise_weight, self.max_steps, self.time_limit_minutes) < 0:
            raise ConfigError("r1_gamma, lambda_afd, denoise_weight, max_steps and time_limit_minutes must be >= 0")
        if self.model.generator.image_size < self.discriminator.min_image_size():
            raise ConfigError(
                f"a {self.discriminator.kind} discriminator needs images of at least "
                f"{self.discriminator.min_image_size()} pixels, the model makes {self.model.generator.image_size}"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        try:
            model = ModelConfig.from_dict(data.pop("model"))
            discriminator = DiscriminatorConfig(**data.pop("discriminator"))
            return cls(model=model, discriminator=discriminator, **data)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid training config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


# Official README recipes (ddgan-spec §2.2); batch sizes are per process, as there.
_OFFICIAL: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        batch_size=64, num_epochs=1800, lr_d=1.25e-4, lr_g=1.6e-4, ema_decay=0.9999, r1_gamma=0.02, lazy_reg=15,
        hflip=True, discriminator=DiscriminatorConfig(kind="small"),
    ),
    "celebahq": dict(
        batch_size=4, num_epochs=800, lr_d=1e-4, lr_g=2e-4, ema_decay=0.9999, r1_gamma=2.0, lazy_reg=10,
        hflip=True, discriminator=DiscriminatorConfig(kind="large"),
    ),
    "lsun_church": dict(
        batch_size=8, num_epochs=500, lr_d=1e-4, lr_g=1.6e-4, ema_decay=0.999, r1_gamma=1.0, lazy_reg=10,
        hflip=True, discriminator=DiscriminatorConfig(kind="large"),
    ),
    # No official command: the code's defaults with the small discriminator and the CIFAR-10 optimiser settings.
    "stacked_mnist": dict(
        batch_size=64, num_epochs=1800, lr_d=1.25e-4, lr_g=1.6e-4, ema_decay=0.9999, r1_gamma=0.02, lazy_reg=15,
        dataset="stacked_mnist", discriminator=DiscriminatorConfig(kind="small"),
    ),
    # Ours, sized for a shared 2-core CPU in about an hour (a few thousand steps): a narrow small discriminator,
    # batch 32, somewhat higher learning rates and an EMA horizon (~200 steps) that fits so short a run.
    "mnist": dict(
        batch_size=32, num_epochs=10, lr_d=2e-4, lr_g=2.5e-4, ema_decay=0.995, r1_gamma=0.05, lazy_reg=15,
        dataset="mnist", discriminator=DiscriminatorConfig(kind="small", ngf=8, t_emb_dim=64),
        checkpoint_every=200, sample_every=200, log_every=10,
    ),
}  # fmt: skip


def recipe_for(preset: str, objective: str = "ddgan") -> TrainConfig:
    """The default recipe of a preset; SIDDM swaps in the marginal discriminator with its dense heads, no R1."""
    model = get_preset(preset)
    values = dict(_OFFICIAL.get(preset, _OFFICIAL["cifar10"]))
    if objective == "siddm":
        disc = values["discriminator"]
        values["discriminator"] = dataclasses.replace(disc, conditional=False, dense_heads=True)
        values["r1_gamma"] = 0.0
    return TrainConfig(model=model, objective=objective, **values)
