"""The training recipe: frozen dataclasses, with the official per-dataset defaults (ddgan-spec §2.2, §5).

`recipe_for(preset, objective)` gives the defaults; `TrainConfig.replace(**overrides)` applies flags; the resolved
recipe is written into every run as `train_config.json` and is what `--resume` reads back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from ddgan.model.config import ConfigError, DictConfig, ModelConfig, get_preset

OBJECTIVES = ("ddgan", "siddm")
PRECISIONS = ("auto", "fp32", "bf16")
DATASET_KINDS = ("auto", "mnist", "stacked_mnist", "image_folder", "cifar10", "lmdb")  # training.data formats


@dataclass(frozen=True, kw_only=True)
class LoopConfig(DictConfig):
    """How the shared training loop drives a run (`training.loop`): when it stops, checkpoints, samples, logs.

    None of it changes what a step computes, so a `--resume` may change any of it (`RESUMABLE`).
    """

    max_steps: int | None = None  # None: no step limit (the trainer's own length: all epochs)
    time_limit_minutes: float = 0.0  # 0: none; otherwise checkpoint, export and stop after this long
    checkpoint_every: int = 1000  # steps
    checkpoint_minutes: float = 0.0  # also checkpoint when this long has passed since the last one (0: off)
    keep_checkpoints: int = 3
    sample_every: int = 1000  # steps; EMA sample grid PNG + TensorBoard image (0: only at the end)
    sample_count: int = 64
    sample_seed: int = 0
    log_every: int = 50  # steps; TensorBoard scalars and the progress bar's numbers
    num_workers: int = 0  # DataLoader workers for on-disk datasets
    num_threads: int = 0  # CPU: torch.set_num_threads (0: ddgan.model.threads.default_threads())

    RESUMABLE: ClassVar[frozenset[str]] = frozenset()  # fields beyond the loop's a resumed run may change

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or absent: no limit), got {self.max_steps}")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "sample_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("time_limit_minutes", "checkpoint_minutes", "sample_every", "num_workers", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def resumable_fields(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(LoopConfig)) | cls.RESUMABLE

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DiscriminatorConfig(DictConfig):
    """Architecture of the discriminator (``kind`` small/large as the official code, ``ngf`` its width)."""

    kind: str = "small"
    ngf: int = 64
    t_emb_dim: int = 256
    conditional: bool = True  # DDGAN: condition on x_{t+1}; SIDDM's marginal discriminator: False
    dense_heads: bool = False  # SIDDM: decoder with the denoising (x_0) and AFD (x_{t+1}) output maps

    def __post_init__(self) -> None:
        if self.kind not in ("small", "large"):
            raise ConfigError(f"discriminator kind must be 'small' or 'large', got {self.kind!r}")
        if self.ngf < 1 or self.t_emb_dim < 2 or self.t_emb_dim % 2:
            raise ConfigError("discriminator ngf must be >= 1 and t_emb_dim a positive even number")

    def channel_plan(self) -> list[tuple[int, int, bool]]:
        """(in, out, downsample) per DownConvBlock, after the 1x1 start conv to 2·ngf channels."""
        n = self.ngf
        if self.kind == "small":
            return [(2 * n, 2 * n, False), (2 * n, 4 * n, True), (4 * n, 8 * n, True), (8 * n, 8 * n, True)]
        return [(2 * n, 4 * n, True), (4 * n, 8 * n, True)] + [(8 * n, 8 * n, True)] * 4

    def min_image_size(self) -> int:
        return 4 * 2 ** sum(down for _, _, down in self.channel_plan())


@dataclass(frozen=True, kw_only=True)
class TrainConfig(LoopConfig):
    """Everything a DDGAN / SIDDM run needs besides the data and output paths."""

    model: ModelConfig
    objective: str = "ddgan"
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    dataset: str = "auto"  # training.data kind: auto, mnist, stacked_mnist, image_folder, cifar10, lmdb
    hflip: bool = False
    batch_size: int = 64  # per process, as the official --batch_size
    num_epochs: int = 1800
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
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (bf16: autocast on either)
    # Warm start: a model directory whose generator starts G and its EMA (the discriminator starts fresh), and
    # the sha256 of its weights, so a resumed or repeated run can tell it was the same file.
    init_generator: str | None = None
    init_generator_sha256: str | None = None
    # Steps that train only D (G and its EMA held): a fresh D beside a trained G gives it noise for gradients.
    d_warmup_steps: int = 0

    RESUMABLE: ClassVar[frozenset[str]] = frozenset({"num_epochs"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dataset not in DATASET_KINDS:
            raise ConfigError(f"dataset must be one of {DATASET_KINDS}, got {self.dataset!r}")
        if self.objective == "siddm" and (self.discriminator.conditional or not self.discriminator.dense_heads):
            raise ConfigError("the siddm objective needs an unconditional discriminator with dense heads")
        if self.objective == "ddgan" and (not self.discriminator.conditional or self.discriminator.dense_heads):
            raise ConfigError("the ddgan objective needs a conditional discriminator without dense heads")
        if self.d_warmup_steps < 0:
            raise ConfigError(f"d_warmup_steps must be >= 0, got {self.d_warmup_steps}")
        for name in ("batch_size", "num_epochs", "lazy_reg"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.lr_g, self.lr_d) <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("learning rates must be positive and Adam betas in [0, 1)")
        if min(self.r1_gamma, self.lambda_afd, self.denoise_weight) < 0:
            raise ConfigError("r1_gamma, lambda_afd and denoise_weight must be >= 0")
        if (self.init_generator is None) != (self.init_generator_sha256 is None):
            raise ConfigError("init_generator and init_generator_sha256 go together")
        if self.model.generator.image_size < self.discriminator.min_image_size():
            raise ConfigError(
                f"a {self.discriminator.kind} discriminator needs images of at least "
                f"{self.discriminator.min_image_size()} pixels, the model makes {self.model.generator.image_size}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if isinstance(data, Mapping) and data.get("max_steps") == 0:
            data = {**data, "max_steps": None}  # runs of ddgan-serve 0.2 stored 0 for "no step limit"
        return super().from_dict(data)


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
