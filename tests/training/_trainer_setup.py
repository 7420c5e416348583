"""Tiny recipes and datasets shared by the trainer tests (fast on 2 CPU cores)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
from ddgan.training.datasets import ArrayImageDataset
from ddgan.training.train_config import DiscriminatorConfig, TrainConfig

TINY_MODEL = ModelConfig(
    preset="tiny",
    generator=GeneratorConfig(
        num_channels=1,
        num_channels_dae=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        image_size=32,
        nz=4,
        z_emb_dim=8,
        n_mlp=1,
    ),
    diffusion=DiffusionConfig(num_timesteps=4),
    dataset="tiny-test",
)


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models run fastest, and spin least on a shared machine, on one intra-op thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(objective: str = "ddgan", **changes) -> TrainConfig:
    siddm = objective == "siddm"
    values = dict(
        model=TINY_MODEL,
        objective=objective,
        discriminator=DiscriminatorConfig(kind="small", ngf=2, t_emb_dim=8, conditional=not siddm, dense_heads=siddm),
        batch_size=4,
        num_epochs=2,
        lr_g=1e-3,
        lr_d=1e-3,
        ema_decay=0.9,
        r1_gamma=0.5,
        lazy_reg=2,
        seed=7,
        checkpoint_every=100,
        sample_every=100,
        log_every=1,
        sample_count=4,
    )
    values.update(changes)
    return TrainConfig(**values)


def tiny_dataset(count: int = 16, seed: int = 0) -> ArrayImageDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 1, 32, 32), generator=generator, dtype=torch.uint8)
    return ArrayImageDataset(images)


def write_tiny_npz(path: Path, count: int = 32) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, count, dtype=np.uint8),
        x_test=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 8, dtype=np.uint8),
    )
    return path


def state_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
