"""Frozen configuration dataclasses and named presets for DDGAN generators.

A `ModelConfig` fully determines a generator's architecture and its diffusion schedule; it is saved as
`config.json` beside every checkpoint. Field names of `GeneratorConfig` follow the official argparse names
(`num_channels_dae`, `ch_mult`, ...) so any official training command maps onto our model.
"""

from __future__ import annotations

import dataclasses
import json
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Network precisions by the names the CLI, the registry, the API and the metrics use.
DTYPE_NAMES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or unsupported."""


@dataclass(frozen=True)
class GeneratorConfig:
    """NCSN++ generator with AdaGN latent conditioning (official defaults unless stated)."""

    num_channels: int = 3
    num_channels_dae: int = 128  # base width `nf`
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    image_size: int = 32
    nz: int = 100
    z_emb_dim: int = 256
    n_mlp: int = 3
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    not_use_tanh: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_channels < 1 or self.num_channels_dae < 1 or self.nz < 1 or self.z_emb_dim < 1:
            raise ConfigError("num_channels, num_channels_dae, nz and z_emb_dim must be positive")
        if not self.ch_mult:
            raise ConfigError("ch_mult must list at least one multiplier")
        if self.image_size % (2 ** (len(self.ch_mult) - 1)) != 0:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by 2**{len(self.ch_mult) - 1} "
                f"(one halving per level of ch_mult={self.ch_mult})"
            )
        if self.num_res_blocks < 1 or self.n_mlp < 0:
            raise ConfigError("num_res_blocks must be >= 1 and n_mlp >= 0")

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))


@dataclass(frozen=True)
class DiffusionConfig:
    """Discretised VP schedule of DDGAN (spec §4): T steps on τ ∈ [1e-3, 1]."""

    num_timesteps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= self.num_timesteps <= 1000:
            raise ConfigError(f"num_timesteps must be in 1..1000, got {self.num_timesteps}")
        if not 0 < self.beta_min < self.beta_max:
            raise ConfigError("need 0 < beta_min < beta_max")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DDGAN sampler: preset name, architecture, schedule, provenance."""

    preset: str
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    dataset: str = ""
    trained_on: str = ""  # free text: data path / run / "official netG_550.pth"; empty for random weights

    @property
    def image_shape(self) -> tuple[int, int, int]:
        g = self.generator
        return (g.num_channels, g.image_size, g.image_size)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        try:
            generator = _build(GeneratorConfig, data.get("generator", {}))
            diffusion = _build(DiffusionConfig, data.get("diffusion", {}))
            rest = {k: v for k, v in data.items() if k not in ("generator", "diffusion")}
            return cls(generator=generator, diffusion=diffusion, **rest)
        except TypeError as exc:
            raise ConfigError(f"invalid model config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _build(kind: type, values: Mapping[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**converted)


_CELEBA_LSUN = GeneratorConfig(
    num_channels_dae=64, ch_mult=(1, 1, 2, 2, 4, 4), image_size=256, n_mlp=3, nz=100, z_emb_dim=256
)

PRESETS: dict[str, ModelConfig] = {
    "cifar10": ModelConfig(
        preset="cifar10",
        generator=GeneratorConfig(num_channels_dae=128, ch_mult=(1, 2, 2, 2), image_size=32, n_mlp=4),
        diffusion=DiffusionConfig(num_timesteps=4),
        dataset="cifar10",
    ),
    # The official `celeba_256` recipe: CelebA-HQ 256x256, two denoising steps.
    "celebahq": ModelConfig(
        preset="celebahq", generator=_CELEBA_LSUN, diffusion=DiffusionConfig(num_timesteps=2), dataset="celebahq"
    ),
    "lsun_church": ModelConfig(
        preset="lsun_church", generator=_CELEBA_LSUN, diffusion=DiffusionConfig(num_timesteps=4), dataset="lsun_church"
    ),
    # Ours: MNIST padded 28 -> 32 as the official StackedMNIST pipeline does, at a width a shared 2-core CPU
    # trains in about an hour (~0.09 GFLOP per image and forward pass).
    "mnist": ModelConfig(
        preset="mnist",
        generator=GeneratorConfig(
            num_channels=1,
            num_channels_dae=16,
            ch_mult=(1, 1, 2),
            num_res_blocks=1,
            attn_resolutions=(),
            image_size=32,
            nz=32,
            z_emb_dim=64,
            n_mlp=2,
        ),
        diffusion=DiffusionConfig(num_timesteps=4),
        dataset="mnist",
    ),
    "stacked_mnist": ModelConfig(
        preset="stacked_mnist",
        generator=GeneratorConfig(num_channels=3, num_channels_dae=64, ch_mult=(1, 2, 2, 2), image_size=32, n_mlp=4),
        diffusion=DiffusionConfig(num_timesteps=4),
        dataset="stacked_mnist",
    ),
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# Official options whose non-default values change the network in ways our generator does not implement.
_FIXED_OFFICIAL_OPTIONS: dict[str, Any] = {
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "residual",
    "embedding_type": "positional",
    "conditional": True,
    "fir": True,
    "centered": True,
    "use_geometric": False,
}


def from_official_args(args: Mapping[str, Any] | Namespace, preset: str = "custom") -> ModelConfig:
    """Build a `ModelConfig` from the official `train_ddgan.py` / `test_ddgan.py` argument names."""
    values = dict(vars(args)) if isinstance(args, Namespace) else dict(args)
    for name, required in _FIXED_OFFICIAL_OPTIONS.items():
        if name in values and values[name] != required:
            raise ConfigError(f"official option {name}={values[name]!r} is not supported (only {required!r})")
    if "ch_mult" not in values:
        raise ConfigError("official args must give ch_mult (it has no default in train_ddgan.py)")
    defaults = GeneratorConfig()
    generator = GeneratorConfig(
        num_channels=int(values.get("num_channels", defaults.num_channels)),
        num_channels_dae=int(values.get("num_channels_dae", defaults.num_channels_dae)),
        ch_mult=tuple(int(m) for m in values["ch_mult"]),
        num_res_blocks=int(values.get("num_res_blocks", defaults.num_res_blocks)),
        attn_resolutions=tuple(int(r) for r in values.get("attn_resolutions", defaults.attn_resolutions)),
        image_size=int(values.get("image_size", defaults.image_size)),
        nz=int(values.get("nz", defaults.nz)),
        z_emb_dim=int(values.get("z_emb_dim", defaults.z_emb_dim)),
        n_mlp=int(values.get("n_mlp", defaults.n_mlp)),
        fir_kernel=tuple(int(k) for k in values.get("fir_kernel", defaults.fir_kernel)),
        skip_rescale=bool(values.get("skip_rescale", defaults.skip_rescale)),
        not_use_tanh=bool(values.get("not_use_tanh", defaults.not_use_tanh)),
        dropout=float(values.get("dropout", defaults.dropout)),
    )
    diffusion = DiffusionConfig(
        num_timesteps=int(values.get("num_timesteps", 4)),
        beta_min=float(values.get("beta_min", 0.1)),
        beta_max=float(values.get("beta_max", 20.0)),
    )
    return ModelConfig(preset=preset, generator=generator, diffusion=diffusion, dataset=str(values.get("dataset", "")))
