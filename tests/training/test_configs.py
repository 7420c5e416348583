"""One serialisation for every config and metadata class (`model.config.DictConfig`): round trip and errors."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil

import pytest

from ddgan.model.config import ConfigError, DictConfig, DiffusionConfig, GeneratorConfig, ModelConfig, get_preset
from ddgan.model.ddpm_io import DDPMConfig
from ddgan.training.classifier import ClassifierTrainConfig
from ddgan.training.ddpm_config import DDPMTrainConfig, preset_config
from ddgan.training.mode_coverage import FrechetReport, ModeReport
from ddgan.training.toy import GridMetrics, ToyConfig
from ddgan.training.train_config import DiscriminatorConfig, LoopConfig, TrainConfig, recipe_for

# One instance per class, away from its defaults: nested dataclasses, tuples, None, floats given as ints.
EXAMPLES: list[DictConfig] = [
    GeneratorConfig(num_channels=1, ch_mult=(1, 2), attn_resolutions=(), image_size=16, dropout=0.1),
    DiffusionConfig(num_timesteps=2, beta_max=10.0),
    get_preset("mnist").replace(trained_on="run 7"),
    DDPMConfig(num_channels=3, image_size=16, num_train_timesteps=1000, default_steps=50, dataset="cifar10"),
    DiscriminatorConfig(kind="large", ngf=8, conditional=False, dense_heads=True),
    LoopConfig(max_steps=5, checkpoint_minutes=2.5, sample_every=0),
    recipe_for("mnist", "siddm").replace(max_steps=None, num_epochs=3, hflip=True),
    recipe_for("cifar10").replace(max_steps=100, precision="bf16"),
    preset_config("cifar10", attention_levels=(0, 1), max_steps=7),
    ClassifierTrainConfig(epochs=2, lr=1e-3, max_shift=0),
    ToyConfig(objective="siddm", num_timesteps=8, adam_betas=(0.0, 0.99)),
    GridMetrics(modes_covered=25, high_quality=0.9, reverse_kl=0.01, frechet_2d=0.2),
    ModeReport(num_modes=10, modes_covered=9, kl_to_uniform=0.1, mean_confidence=0.97, histogram=[1, 2, 3]),
    FrechetReport(generated_vs_test=1.5, real_train_vs_test=0.2, num_generated=10, num_reference=20),
]


def _all_subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_all_subclasses(direct)}}


def test_every_config_class_is_covered() -> None:
    import ddgan.model
    import ddgan.training

    for package in (ddgan.model, ddgan.training):  # every class there, whatever other tests imported
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    assert _all_subclasses(DictConfig) == {type(example) for example in EXAMPLES}


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda c: type(c).__name__)
def test_round_trip_and_errors(config: DictConfig) -> None:
    kind = type(config)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready: lists, dicts, numbers, strings, None
    assert kind.from_dict(data) == config
    assert kind.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown .* fields: \\['colour'\\]"):
        kind.from_dict({**data, "colour": "red"})
    first = dataclasses.fields(kind)[0].name
    with pytest.raises(ConfigError, match=f"{first}: expected"):
        kind.from_dict({**data, first: {"not": "a scalar"} if not isinstance(data[first], dict) else 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        kind.from_json("{")


def test_nested_values_are_rebuilt_from_their_types() -> None:
    data = recipe_for("mnist").to_dict()
    assert data["model"]["generator"]["ch_mult"] == [1, 1, 2] and data["max_steps"] is None
    data["model"]["diffusion"]["beta_max"] = 20  # an int where a float belongs (JSON does not distinguish)
    config = TrainConfig.from_dict(data)
    assert isinstance(config.model, ModelConfig) and config.model.generator.ch_mult == (1, 1, 2)
    assert config.model.diffusion.beta_max == 20.0 and isinstance(config.model.diffusion.beta_max, float)
    assert ModelConfig.from_dict({"preset": "p"}) == ModelConfig(preset="p")  # absent fields: defaults
    with pytest.raises(ConfigError, match="TrainConfig.model.generator.nz: expected int, got '4'"):
        TrainConfig.from_dict({**data, "model": {**data["model"], "generator": {"nz": "4"}}})
    with pytest.raises(ConfigError, match="ToyConfig.adam_betas: expected 2 values"):
        ToyConfig.from_dict({"adam_betas": [0.5]})
    with pytest.raises(ConfigError, match="hflip: expected bool, got 1"):
        DDPMTrainConfig.from_dict({"hflip": 1})
    with pytest.raises(ConfigError, match="TrainConfig: .*model"):  # a required field missing
        TrainConfig.from_dict({})
    with pytest.raises(ConfigError, match="objective must be one of"):  # the class's own checks
        ToyConfig.from_dict({"objective": "vae"})
