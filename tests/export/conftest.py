"""Tiny model directories for export tests (a real export of a full preset takes minutes on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddgan.export.backends import register
from ddgan.model.checkpoint import save_model
from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
from ddgan.model.sampler import Sampler, open_sampler, random_generator

register()  # the exporters' backends join the sampler factory, as the `ddgan` command and the server do


def load_sampler(directory: Path, **options: object) -> Sampler:
    """The factory's sampler of a model directory (backend, device, dtype ... as keyword options)."""
    return open_sampler(directory, **options)  # type: ignore[arg-type]


def tiny_config(ch_mult: tuple[int, ...] = (1, 2), num_timesteps: int = 2) -> ModelConfig:
    """Every block kind of NCSN++ (resblocks, FIR down/up, input pyramid, mid attention) at 8x8, T=2."""
    generator = GeneratorConfig(
        num_channels=1,
        num_channels_dae=8,
        ch_mult=ch_mult,
        num_res_blocks=1,
        attn_resolutions=(),
        image_size=8,
        nz=4,
        z_emb_dim=8,
        n_mlp=1,
    )
    return ModelConfig(preset="tiny", generator=generator, diffusion=DiffusionConfig(num_timesteps=num_timesteps))


def make_model_dir(directory: Path, config: ModelConfig, seed: int = 0) -> Path:
    """A model directory with random but non-trivial weights (zero-initialised convs get random values too)."""
    generator = random_generator(config, seed)
    state = generator.state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        perturbed = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    return save_model(directory, config, perturbed)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model", tiny_config())
