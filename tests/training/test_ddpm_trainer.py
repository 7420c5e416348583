"""The DDPM baseline trainer on a tiny U-Net: updates, exact resume, export loadable by the server's sampler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.model.checkpoint import CheckpointError
from ddgan.model.ddpm import DDPMSampler
from ddgan.model.sampler import open_sampler
from ddgan.training import ddpm_cli
from ddgan.training.data import ArrayImageDataset
from ddgan.training.ddpm_trainer import (
    CHECKPOINT_FILE,
    DDPMTrainConfig,
    DDPMTrainer,
    preset_config,
    read_checkpoint,
    stream_for,
)


def tiny_config(**changes) -> DDPMTrainConfig:
    values = dict(image_size=8, channels=1, block_out_channels=(8, 16), batch_size=4, warmup_steps=2, steps=4)
    return DDPMTrainConfig(**{**values, **changes})


def tiny_dataset(count: int = 12) -> ArrayImageDataset:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (count, 1, 8, 8), dtype=np.uint8))
    return ArrayImageDataset(images)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_one_step_updates_unet_and_ema_with_a_finite_loss() -> None:
    trainer = DDPMTrainer(tiny_config())
    before, ema_before = params(trainer.unet), params(trainer.ema)
    x_0 = next(stream_for(trainer, tiny_dataset()))
    stats = trainer.train_step(x_0)
    assert np.isfinite(stats["loss"]) and stats["loss"] > 0 and trainer.step == 1
    assert stats["lr"] == pytest.approx(trainer.config.lr / 2)  # warm-up: step 1 of 2
    after, ema_after = params(trainer.unet), params(trainer.ema)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # EMA at step 0 uses decay min(ema_decay, 1/10): ema = 0.1·ema + 0.9·θ
    for e0, e1, p in zip(ema_before, ema_after, after, strict=True):
        torch.testing.assert_close(e1, 0.1 * e0 + 0.9 * p)


def test_loss_is_l_simple_on_the_forward_process() -> None:
    """With a network that outputs zeros, L_simple is E‖ε‖² ≈ 1 whatever x_0 and t."""
    trainer = DDPMTrainer(tiny_config(batch_size=64))
    for p in trainer.unet.conv_out.parameters():
        torch.nn.init.zeros_(p)
    trainer.unet.conv_out.requires_grad_(False)
    x_0 = torch.rand(64, 1, 8, 8) * 2 - 1
    assert trainer.train_step(x_0)["loss"] == pytest.approx(1.0, abs=0.05)


def test_checkpoint_resume_reproduces_the_next_step(tmp_path: Path) -> None:
    dataset = tiny_dataset()
    trainer = DDPMTrainer(tiny_config())
    batches = stream_for(trainer, dataset)
    for _ in range(2):
        trainer.train_step(next(batches))
    trainer.save_checkpoint(tmp_path / CHECKPOINT_FILE, {"elapsed_s": 1.5})
    trainer.train_step(next(batches))

    resumed = DDPMTrainer(tiny_config())
    assert resumed.load_checkpoint(tmp_path / CHECKPOINT_FILE) == {"elapsed_s": 1.5}
    assert resumed.step == 2
    resumed.train_step(next(stream_for(resumed, dataset)))
    for a, b in zip(
        params(trainer.unet) + params(trainer.ema), params(resumed.unet) + params(resumed.ema), strict=True
    ):
        assert torch.equal(a, b)


def test_checkpoint_errors(tmp_path: Path) -> None:
    trainer = DDPMTrainer(tiny_config())
    trainer.save_checkpoint(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="block_out_channels"):
        DDPMTrainer(tiny_config(block_out_channels=(8, 8))).load_checkpoint(tmp_path / CHECKPOINT_FILE)
    extended = DDPMTrainer(tiny_config(steps=100))  # a resumed run may train longer
    extended.load_checkpoint(tmp_path / CHECKPOINT_FILE)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="no DDPM training checkpoint"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_exported_model_loads_in_the_server_sampler(tmp_path: Path) -> None:
    trainer = DDPMTrainer(tiny_config(dataset_name="digits"))
    trainer.train_step(next(stream_for(trainer, tiny_dataset())))
    model_dir = trainer.export(tmp_path / "model")
    assert (model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    sampler = open_sampler(model_dir)
    assert isinstance(sampler, DDPMSampler)
    info = sampler.info
    assert info.image_shape == (1, 8, 8) and info.default_steps == 1000 and info.dataset == "digits"
    scheduler = sampler.scheduler(1000)
    torch.testing.assert_close(scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))  # DDPM's linear β
    images = sampler.sample([3, 4], steps=3)
    assert images.shape == (2, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
    # the sampler runs the EMA weights
    ema_out = trainer.ema(torch.zeros(1, 1, 8, 8), 5).sample
    torch.testing.assert_close(sampler.unet(torch.zeros(1, 1, 8, 8), 5).sample, ema_out)


def test_presets() -> None:
    cifar = preset_config("cifar10")
    assert cifar.block_out_channels == (128, 256, 256, 256) and cifar.attention_levels == (1,) and cifar.hflip
    assert preset_config("mnist", lr=None, batch_size=8) == DDPMTrainConfig(batch_size=8)
    with pytest.raises(ValueError, match="unknown DDPM preset"):
        preset_config("imagenet")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    ddpm_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-ddpm", *argv])
    return args.handler(args)


@pytest.mark.slow
def test_cli_trains_checkpoints_resumes_and_refuses_bad_input(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=images, y_train=np.zeros(16, np.uint8))
    out = tmp_path / "run"
    common = ["--data", str(tmp_path / "d.npz"), "--out", str(out), "--image-size", "8", "--block-channels", "8,16"]
    fast = ["--batch-size", "4", "--sample-every", "0", "--final-sample-steps", "2", "--log-every", "1"]
    assert run_cli(*common, *fast, "--steps", "2") == 0
    tensors, meta = read_checkpoint(out / CHECKPOINT_FILE)
    assert meta["step"] == 2 and meta["config"]["block_out_channels"] == [8, 16]
    assert (out / "samples" / "final_2steps.png").is_file()
    assert open_sampler(out / "model").info.image_shape == (1, 8, 8)
    assert json.loads((out / "config.json").read_text())["image_size"] == 8

    assert run_cli(*common, *fast, "--steps", "3") == 2  # an existing run is not overwritten
    assert run_cli(*common, *fast, "--steps", "3", "--resume", "--lr", "0.1") == 2  # the recipe is fixed
    assert run_cli(*common, *fast, "--steps", "3", "--resume") == 0
    assert read_checkpoint(out / CHECKPOINT_FILE)[1]["step"] == 3

    missing = tmp_path / "missing.npz"
    assert run_cli("--data", str(missing), "--out", str(tmp_path / "other"), *fast) == 2
    assert not (tmp_path / "other").exists()  # nothing written before the data was validated
