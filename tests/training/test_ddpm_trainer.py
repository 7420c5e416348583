"""The DDPM baseline trainer on a tiny U-Net: updates, exact resume on the shared loop, the server-loadable export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ddgan.cli
from ddgan.model.config import ConfigError
from ddgan.model.ddpm import DDPMSampler
from ddgan.model.sampler import open_sampler
from ddgan.training.datasets import ArrayImageDataset
from ddgan.training.ddpm_config import DDPMTrainConfig, preset_config
from ddgan.training.ddpm_trainer import DDPMTrainer
from ddgan.training.run_state import load_run_state
from tests.training._trainer_setup import (
    one_thread,  # noqa: F401 (the fixture below)
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes) -> DDPMTrainConfig:
    values = dict(
        image_size=8, channels=1, block_out_channels=(8, 16), batch_size=4, warmup_steps=2, max_steps=4,
        sample_every=0, sample_count=4, sample_steps=2, final_sample_steps=0, checkpoint_minutes=0.0,
    )  # fmt: skip
    return DDPMTrainConfig(**{**values, **changes})


def tiny_dataset(count: int = 12) -> ArrayImageDataset:
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (count, 1, 8, 8), dtype=np.uint8))
    return ArrayImageDataset(images)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_one_step_updates_unet_and_ema_with_a_finite_loss(tmp_path: Path) -> None:
    trainer = DDPMTrainer(tiny_config(), tiny_dataset(), tmp_path)
    before, ema_before = params(trainer.unet), params(trainer.ema)
    stats = trainer.train_step(next(trainer.stream.batches(0)))
    assert np.isfinite(float(stats["loss"])) and float(stats["loss"]) > 0 and trainer.step == 1
    assert trainer.extra_scalars()["train/lr"] == pytest.approx(trainer.config.lr / 2)  # warm-up: step 1 of 2
    after, ema_after = params(trainer.unet), params(trainer.ema)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # EMA at step 0 uses decay min(ema_decay, 1/10): ema = 0.1·ema + 0.9·θ
    for e0, e1, p in zip(ema_before, ema_after, after, strict=True):
        torch.testing.assert_close(e1, 0.1 * e0 + 0.9 * p)


def test_loss_is_l_simple_on_the_forward_process(tmp_path: Path) -> None:
    """With a network that outputs zeros, L_simple is E‖ε‖² ≈ 1 whatever x_0 and t."""
    trainer = DDPMTrainer(tiny_config(batch_size=64), tiny_dataset(64), tmp_path)
    for p in trainer.unet.conv_out.parameters():
        torch.nn.init.zeros_(p)
    trainer.unet.conv_out.requires_grad_(False)
    x_0 = torch.rand(64, 1, 8, 8) * 2 - 1
    assert float(trainer.train_step(x_0)["loss"]) == pytest.approx(1.0, abs=0.05)


def _fit(run: Path, max_steps: int, resume: bool = False) -> DDPMTrainer:
    trainer = DDPMTrainer(tiny_config(max_steps=max_steps, checkpoint_every=2), tiny_dataset(), run)
    if resume:
        assert trainer.resume()
    assert trainer.fit("test", progress=False) == "finished"
    return trainer


def test_resume_through_the_shared_loop_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "straight", max_steps=5)  # 3 steps per epoch: the resume crosses an epoch
    _fit(tmp_path / "split", max_steps=2)
    resumed = _fit(tmp_path / "split", max_steps=5, resume=True)
    assert resumed.step == straight.step == 5
    for name in ("unet", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), name
    for sa, sb in zip(straight.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # the run format is the DDGAN trainer's: checkpoints/step_N, the newest kept, model/ from the last one
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step_*")) == [
        "step_00000002",
        "step_00000004",
        "step_00000005",
    ]
    step, state = load_run_state(tmp_path / "split" / "checkpoints" / "step_00000005")
    assert step == 5 and set(state) == {"unet", "ema", "optim", "world_size"}
    assert "5 steps" in json.loads((tmp_path / "split" / "model" / "ddpm.json").read_text())["trained_on"]


def test_exported_model_loads_in_the_server_sampler(tmp_path: Path) -> None:
    trainer = DDPMTrainer(tiny_config(dataset_name="digits"), tiny_dataset(), tmp_path)
    trainer.train_step(next(trainer.stream.batches(0)))
    model_dir = trainer.export(tmp_path / "model", "test")
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
    assert cifar.preset == "cifar10" and cifar.max_steps == 800_000
    assert preset_config("mnist", lr=None, batch_size=8) == DDPMTrainConfig(batch_size=8)
    with pytest.raises(ConfigError, match="unknown DDPM preset"):
        preset_config("imagenet")
    with pytest.raises(ConfigError, match="needs max_steps"):
        DDPMTrainConfig(max_steps=None)


def _train_ddpm(*argv: str) -> int:
    return ddgan.cli.main(["train-ddpm", *argv])


@pytest.mark.slow
def test_cli_trains_resumes_without_data_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    images = np.random.default_rng(1).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=images, y_train=np.zeros(16, np.uint8))
    out = tmp_path / "run"
    recipe = ["--image-size", "8", "--block-channels", "8,16", "--batch-size", "4"]
    fast = ["--out", str(out), "--no-progress", "--threads", "1", "--sample-every", "0", "--final-sample-steps", "2"]
    assert _train_ddpm("--data", str(tmp_path / "d.npz"), *recipe, *fast, "--max-steps", "2") == 0
    saved = DDPMTrainConfig.from_json((out / "train_config.json").read_text())
    assert saved.block_out_channels == (8, 16) and saved.max_steps == 2 and saved.final_sample_steps == 2
    assert json.loads((out / "run.json").read_text())["data"] == str((tmp_path / "d.npz").resolve())
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert (out / "samples" / "final_2steps.png").is_file()
    assert open_sampler(out / "model").info.image_shape == (1, 8, 8)

    with pytest.raises(SystemExit, match="already holds a run"):
        _train_ddpm("--data", str(tmp_path / "d.npz"), *fast)
    with pytest.raises(SystemExit, match="recipe is fixed.*got lr"):
        _train_ddpm("--resume", "--lr", "0.1", *fast)
    capsys.readouterr()
    assert _train_ddpm("--resume", *fast) == 0  # finished: says so, changes nothing
    assert "is finished (step 2 of 2); to train longer, resume with a larger --max-steps (now 2)" in (
        capsys.readouterr().err
    )
    assert "resumed" not in json.loads((out / "run.json").read_text())
    assert _train_ddpm("--resume", "--steps", "3", *fast) == 0  # no --data; --steps: the 0.2 name of --max-steps
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 3

    other = tmp_path / "other"
    with pytest.raises(SystemExit, match="missing.npz does not exist"):
        _train_ddpm("--data", str(tmp_path / "missing.npz"), "--out", str(other))
    assert not other.exists()  # nothing written before the data was validated
    (other / "model").mkdir(parents=True)
    (other / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match="run of ddgan-serve 0.2"):
        _train_ddpm("--out", str(other), "--resume")
