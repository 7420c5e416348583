"""Presets (official key names, shapes and parameter counts), config JSON and the official-argument mapping."""

from __future__ import annotations

import math
from argparse import Namespace

import pytest

from ddgan.model.checkpoint import expected_state_shapes
from ddgan.model.config import (
    PRESETS,
    ConfigError,
    DiffusionConfig,
    GeneratorConfig,
    ModelConfig,
    from_official_args,
    get_preset,
)

from .conftest import TINY_CONFIG


@pytest.mark.parametrize(
    ("preset", "keys", "parameters"),
    [("cifar10", 384, 48_432_515), ("celebahq", 548, 39_726_979), ("lsun_church", 548, 39_726_979)],
)
def test_full_size_presets_have_the_official_key_and_parameter_counts(preset: str, keys: int, parameters: int) -> None:
    shapes = expected_state_shapes(get_preset(preset))
    assert len(shapes) == keys
    assert sum(math.prod(shape) for shape in shapes.values()) == parameters


CIFAR10_EXAMPLES = {
    "all_modules.0.weight": (512, 128),
    "all_modules.1.bias": (512,),
    "all_modules.2.weight": (128, 3, 3, 3),
    "all_modules.3.GroupNorm_0.style.weight": (256, 256),
    "all_modules.3.Dense_0.weight": (128, 512),
    "all_modules.5.Conv_2.weight": (128, 128, 1, 1),
    "all_modules.6.Conv2d_0.weight": (128, 3, 3, 3),
    "all_modules.7.Conv_2.weight": (256, 128, 1, 1),
    "all_modules.7.GroupNorm_1.style.weight": (512, 256),
    "all_modules.8.GroupNorm_0.weight": (256,),
    "all_modules.8.NIN_0.W": (256, 256),
    "all_modules.8.NIN_3.W": (256, 256),
    "all_modules.12.Conv2d_0.weight": (256, 128, 3, 3),
    "all_modules.22.GroupNorm_0.style.weight": (1024, 256),
    "all_modules.22.Conv_0.weight": (256, 512, 3, 3),
    "all_modules.25.Conv_2.weight": (256, 256, 1, 1),
    "all_modules.32.Conv_0.weight": (256, 384, 3, 3),
    "all_modules.35.Conv_2.weight": (128, 384, 1, 1),
    "all_modules.38.weight": (128,),
    "all_modules.39.weight": (3, 128, 3, 3),
    "z_transform.1.weight": (256, 100),
    "z_transform.9.weight": (256, 256),
}
CELEBA_EXAMPLES = {
    "all_modules.0.weight": (256, 64),
    "all_modules.6.Conv2d_0.weight": (64, 3, 3, 3),
    "all_modules.20.NIN_0.W": (256, 256),
    "all_modules.24.Conv2d_0.weight": (256, 128, 3, 3),
    "all_modules.47.Conv_2.weight": (64, 192, 1, 1),
    "all_modules.54.weight": (64,),
    "all_modules.55.weight": (3, 64, 3, 3),
    "z_transform.7.weight": (256, 256),
}


@pytest.mark.parametrize(
    ("preset", "examples"),
    [("cifar10", CIFAR10_EXAMPLES), ("celebahq", CELEBA_EXAMPLES), ("lsun_church", CELEBA_EXAMPLES)],
)
def test_example_keys_from_the_spec(preset: str, examples: dict) -> None:
    shapes = expected_state_shapes(get_preset(preset))
    for key, shape in examples.items():
        assert tuple(shapes[key]) == shape, key


def test_adagn_has_no_affine_norm_keys_and_mapping_has_only_odd_indices() -> None:
    shapes = expected_state_shapes(get_preset("cifar10"))
    assert not [k for k in shapes if ".GroupNorm_0.norm" in k or ".GroupNorm_1.norm" in k]
    mapping = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("z_transform.")})
    assert mapping == [1, 3, 5, 7, 9]  # n_mlp=4: input dense + 4 hidden


def test_presets_match_the_official_recipes() -> None:
    assert get_preset("celebahq").diffusion.num_timesteps == 2
    assert get_preset("cifar10").diffusion.num_timesteps == 4
    assert get_preset("lsun_church").generator == get_preset("celebahq").generator
    assert get_preset("mnist").image_shape == (1, 32, 32)
    assert get_preset("stacked_mnist").image_shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("imagenet")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name: str) -> None:
    config = PRESETS[name].replace(trained_on="run 7")
    assert ModelConfig.from_json(config.to_json()) == config


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    data = TINY_CONFIG.to_dict()
    data["generator"]["num_chanels"] = 3
    with pytest.raises(ConfigError, match="num_chanels"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="divisible"):
        GeneratorConfig(image_size=30, ch_mult=(1, 2, 2))
    with pytest.raises(ConfigError):
        DiffusionConfig(num_timesteps=0)


def test_from_official_args_maps_the_training_command() -> None:
    # The official celeba_256 command line.
    args = Namespace(
        image_size=256, num_channels=3, num_channels_dae=64, ch_mult=[1, 1, 2, 2, 4, 4], num_timesteps=2,
        num_res_blocks=2, nz=100, z_emb_dim=256, n_mlp=3, attn_resolutions=(16,), use_geometric=False,
        dataset="celeba_256",
    )  # fmt: skip
    config = from_official_args(args, preset="celebahq")
    assert config.generator == get_preset("celebahq").generator
    assert config.diffusion == get_preset("celebahq").diffusion
    assert config.dataset == "celeba_256"


def test_from_official_args_refuses_unsupported_options() -> None:
    with pytest.raises(ConfigError, match="ch_mult"):
        from_official_args({"nz": 100})
    with pytest.raises(ConfigError, match="progressive"):
        from_official_args({"ch_mult": [1, 2], "progressive": "output_skip"})
