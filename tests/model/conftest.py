"""Shared fixtures of the model tests: tiny configurations and saved model directories (built in tmp dirs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddgan.model.checkpoint import save_model
from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
from ddgan.model.sampler import random_generator

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
PARITY_FIXTURE = SHARED / "reference" / "ddgan_parity_tiny.pt"

# Small enough to run in milliseconds, but with every block kind: resblocks, up/down, pyramid, attention.
TINY_CONFIG = ModelConfig(
    preset="tiny",
    generator=GeneratorConfig(
        num_channels=3,
        num_channels_dae=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        image_size=16,
        nz=4,
        z_emb_dim=8,
        n_mlp=1,
    ),
    diffusion=DiffusionConfig(num_timesteps=4),
    dataset="tiny-test",
)


@pytest.fixture(scope="session")
def parity_case() -> dict:
    if not PARITY_FIXTURE.is_file():
        pytest.skip(f"parity fixture not found at {PARITY_FIXTURE}")
    return torch.load(PARITY_FIXTURE, map_location="cpu", weights_only=True)["tiny_cifar_like"]


@pytest.fixture(scope="session")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    return random_generator(TINY_CONFIG, seed=1).state_dict()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_state_dict: dict) -> Path:
    return save_model(tmp_path_factory.mktemp("models") / "tiny", TINY_CONFIG, tiny_state_dict)


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import DDPMScheduler

    from ddgan.model.ddpm_io import build_unet, save_ddpm

    unet = build_unet("tiny", num_channels=3, seed=2)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    directory = tmp_path_factory.mktemp("models") / "tiny-ddpm"
    return save_ddpm(directory, unet, scheduler, dataset="tiny-test", default_steps=3)
