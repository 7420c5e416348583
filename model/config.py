"""Frozen configuration dataclasses and named presets for DDGAN generators.

A `ModelConfig` fully determines a generator's architecture and its diffusion schedule; it is saved as
`config.json` beside every checkpoint. Field names of `GeneratorConfig` follow the official argparse names
(`num_channels_dae`, `ch_mult`, ...) so any official training command maps onto our model.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from ddgan.model.official_args import OfficialArgsError, parse_options

# Network precisions by the names the CLI, the registry, the API and the metrics use.
DTYPE_NAMES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or unsupported."""


class DictConfig:
    """The one serialisation of every config and metadata dataclass: JSON-ready dicts and back, validated.

    `to_dict` turns nested dataclasses into dicts and tuples into lists; `from_dict` rebuilds them from the
    field types (nested dataclasses, tuples, `X | None`, int / float / bool / str checked), fills absent fields
    with their defaults and reports unknown fields, wrong types and failed validation as `ConfigError`.
    """

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return _from_plain(cls, data, cls.__name__)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    return value


def _from_plain(kind: Any, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected an object, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {unknown}")
    hints = typing.get_type_hints(kind)
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return kind(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a missing required field, or a check in __post_init__
        raise ConfigError(f"{where}: {exc}") from exc


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]  # configs use `X | None` only
        return _convert(hint, value, where)
    if dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, where)
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_convert(arg, item, f"{where}[{i}]") for i, (arg, item) in pairs)
        items = [_convert(args[0] if args else Any, item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and (type(value) is not hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class GeneratorConfig(DictConfig):
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
class DiffusionConfig(DictConfig):
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
class ModelConfig(DictConfig):
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
    """Build a `ModelConfig` from the official `train_ddgan.py` / `test_ddgan.py` options (`model.official_args`).

    Values are read by each option's official type (command-line text or typed values); unknown names fail.
    """
    try:
        values = parse_options(dict(vars(args)) if isinstance(args, Namespace) else dict(args))
    except OfficialArgsError as exc:
        raise ConfigError(str(exc)) from None
    for name, required in _FIXED_OFFICIAL_OPTIONS.items():
        if name in values and values[name] != required:
            raise ConfigError(f"official option {name}={values[name]!r} is not supported (only {required!r})")
    if "ch_mult" not in values:
        raise ConfigError("official args must give ch_mult (it has no default in train_ddgan.py)")
    defaults = GeneratorConfig()
    generator = GeneratorConfig(
        num_channels=int(values.get("num_channels", defaults.num_channels)),
        num_channels_dae=int(values.get("num_channels_dae", defaults.num_channels_dae)),
        ch_mult=values["ch_mult"],
        num_res_blocks=int(values.get("num_res_blocks", defaults.num_res_blocks)),
        attn_resolutions=values.get("attn_resolutions", defaults.attn_resolutions),
        image_size=int(values.get("image_size", defaults.image_size)),
        nz=int(values.get("nz", defaults.nz)),
        z_emb_dim=int(values.get("z_emb_dim", defaults.z_emb_dim)),
        n_mlp=int(values.get("n_mlp", defaults.n_mlp)),
        fir_kernel=values.get("fir_kernel", defaults.fir_kernel),
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
