"""The DDPM baseline: a real ancestral DDPM over a diffusers UNet, its directories, seeds and refusals."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddgan.model.ddpm import DDPMSampler
from ddgan.model.ddpm_io import find_ddpm_layout, is_ddpm_directory, save_ddpm
from ddgan.model.sampler import SamplerError, StepsError, WeightsNotFoundError, open_sampler


def load_ddpm_sampler(directory: Path, **options) -> DDPMSampler:
    sampler = open_sampler(directory, kind="ddpm", **options)
    assert isinstance(sampler, DDPMSampler)
    return sampler


@pytest.fixture(scope="module")
def sampler(tiny_ddpm_dir: Path) -> DDPMSampler:
    return load_ddpm_sampler(tiny_ddpm_dir)


def _hub_copy(pipeline_dir: Path, target: Path) -> Path:
    """The layout of a Hub UNet repository (google/ddpm-*): everything at the top level."""
    target.mkdir()
    for item in (pipeline_dir / "unet").iterdir():
        shutil.copy(item, target / item.name)
    shutil.copy(pipeline_dir / "scheduler" / "scheduler_config.json", target / "scheduler_config.json")
    return target


def test_directory_layout_and_metadata(tiny_ddpm_dir: Path, sampler: DDPMSampler) -> None:
    names = sorted(str(p.relative_to(tiny_ddpm_dir)) for p in tiny_ddpm_dir.rglob("*"))
    assert names == [
        "ddpm.json", "model_index.json", "scheduler", "scheduler/scheduler_config.json",
        "unet", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    info = sampler.info
    assert info.kind == "ddpm" and info.backend == "torch" and not info.random_weights
    assert (info.default_steps, info.min_steps, info.max_steps) == (3, 1, 1000)
    assert info.image_shape == (3, 16, 16) and info.dataset == "tiny-test"
    weights = tiny_ddpm_dir / "unet" / "diffusion_pytorch_model.safetensors"
    assert info.weights_digest == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_sampling_is_ancestral_ddpm_with_strided_timesteps(sampler: DDPMSampler) -> None:
    """Independent re-computation of Ho et al. Alg. 2 (x_0-clipped, σ_t² = β̃_t) over the scheduler's timesteps."""
    steps, seed = 4, 17
    assert sampler.scheduler(steps).timesteps.tolist() == [750, 500, 250, 0]
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(sampler.info.image_shape, generator=generator)[None]
    timesteps = [750, 500, 250, 0]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            a_t = alpha_bar[t]
            a_prev = alpha_bar[prev] if prev >= 0 else torch.tensor(1.0)
            beta_t = 1 - a_t / a_prev
            epsilon = sampler.unet(x, t).sample
            x_0 = ((x - (1 - a_t).sqrt() * epsilon) / a_t.sqrt()).clamp(-1, 1)
            mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x_0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x
            if t > 0:
                variance = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
                mean = mean + variance.sqrt() * torch.randn(sampler.info.image_shape, generator=generator)[None]
            x = mean
    torch.testing.assert_close(sampler.sample([seed], steps=steps), x.clamp(-1, 1), rtol=0, atol=1e-5)


def test_default_steps_progress_and_range(sampler: DDPMSampler) -> None:
    calls: list[tuple[int, int]] = []
    images = sampler.sample([1, 2], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() >= -1 and images.max() <= 1
    assert not torch.equal(images[0], images[1])
    for steps in (0, 1001):
        with pytest.raises(StepsError, match="steps"):
            sampler.sample([1], steps=steps)


def test_images_of_different_steps_share_a_call_and_match_their_own_runs(sampler: DDPMSampler) -> None:
    """Each image follows its own schedule: mixed steps in one call equal each image sampled on its own."""
    calls: list[tuple[int, int]] = []
    mixed = sampler.sample([5, 6, 7], steps=[2, 5, 3], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 5) for k in range(1, 6)]  # iterations: the largest step count
    for row, (seed, steps) in enumerate([(5, 2), (6, 5), (7, 3)]):
        torch.testing.assert_close(mixed[row], sampler.sample([seed], steps=steps)[0], rtol=0, atol=1e-4)
    with pytest.raises(StepsError, match="2 step counts for 3 seeds"):
        sampler.sample([1, 2, 3], steps=[2, 2])


def test_mixed_steps_are_bit_identical_with_a_micro_batch(tiny_ddpm_dir: Path) -> None:
    exact = load_ddpm_sampler(tiny_ddpm_dir, micro_batch=2)
    mixed = exact.sample([5, 6, 7], steps=[2, 5, 3])
    assert torch.equal(mixed[1], exact.sample([6], steps=5)[0])
    assert torch.equal(mixed[2], exact.sample([9, 7], steps=[1, 3])[1])


def test_seeded_images_do_not_depend_on_the_batch(tiny_ddpm_dir: Path, sampler: DDPMSampler) -> None:
    batch = sampler.sample([5, 6, 7], steps=2)
    assert torch.equal(sampler.sample([9, 6, 1], steps=2)[1], batch[1])  # same size: bit-identical
    torch.testing.assert_close(sampler.sample([6], steps=2)[0], batch[1], rtol=0, atol=1e-5)
    exact = load_ddpm_sampler(tiny_ddpm_dir, micro_batch=2)
    exact_batch = exact.sample([5, 6, 7], steps=2)
    assert torch.equal(exact.sample([6], steps=2)[0], exact_batch[1])
    assert torch.equal(exact.sample([7, 8], steps=2)[0], exact_batch[2])


def test_hub_layout_with_a_ddim_scheduler_config(tmp_path: Path, tiny_ddpm_dir: Path, sampler: DDPMSampler) -> None:
    hub = _hub_copy(tiny_ddpm_dir, tmp_path / "ddpm-hub")
    scheduler = json.loads((hub / "scheduler_config.json").read_text())
    scheduler.update(_class_name="DDIMScheduler", set_alpha_to_one=False)  # what some Hub copies carry
    (hub / "scheduler_config.json").write_text(json.dumps(scheduler))
    assert find_ddpm_layout(hub).name == "hub-unet"
    loaded = load_ddpm_sampler(hub)
    assert loaded.info.default_steps == 1000
    assert torch.equal(loaded.sample([3, 4], steps=2), sampler.sample([3, 4], steps=2))


def test_legacy_bin_weights_load_through_weights_only(
    tmp_path: Path, tiny_ddpm_dir: Path, sampler: DDPMSampler
) -> None:
    hub = _hub_copy(tiny_ddpm_dir, tmp_path / "ddpm-bin")
    weights = hub / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), hub / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert torch.equal(load_ddpm_sampler(hub).sample([3], steps=2), sampler.sample([3], steps=2))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_carrying_code_is_refused_and_does_not_run(tmp_path: Path, tiny_ddpm_dir: Path) -> None:
    hub = _hub_copy(tiny_ddpm_dir, tmp_path / "ddpm-evil")
    (hub / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(hub / "diffusion_pytorch_model.bin", "wb") as handle:
        pickle.dump({"conv_in.weight": _RunsCode(marker)}, handle, protocol=2)
    with pytest.raises(SamplerError, match="refusing .*safetensors"):
        load_ddpm_sampler(hub)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path, tiny_ddpm_dir: Path) -> None:
    hub = _hub_copy(tiny_ddpm_dir, tmp_path / "ddpm-missing")
    weights = hub / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(weights)
    del state_dict["conv_in.bias"]
    torch.save(state_dict, hub / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(SamplerError, match="missing keys: conv_in.bias"):
        load_ddpm_sampler(hub)


def test_directory_errors(tmp_path: Path, tiny_ddpm_dir: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_ddpm_sampler(tmp_path / "absent")
    with pytest.raises(SamplerError, match="holds a DDGAN model, not a DDPM one"):
        load_ddpm_sampler(tiny_model_dir)
    assert not is_ddpm_directory(tiny_model_dir) and is_ddpm_directory(tiny_ddpm_dir)
    no_scheduler = tmp_path / "no-scheduler"
    shutil.copytree(tiny_ddpm_dir, no_scheduler)
    shutil.rmtree(no_scheduler / "scheduler")
    with pytest.raises(SamplerError, match="scheduler config"):
        load_ddpm_sampler(no_scheduler)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_ddpm_dir, no_weights)
    (no_weights / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SamplerError, match="no UNet weights"):
        load_ddpm_sampler(no_weights)


def test_random_weights_sampler_is_marked_and_reproducible(tiny_ddpm_dir: Path) -> None:
    options = {"preset": "tiny", "kind": "ddpm", "dataset": "mnist", "random_weights": True, "default_steps": 2}
    first, second = open_sampler(**options), open_sampler(**options)
    info = first.info
    assert info.random_weights and info.image_shape == (1, 32, 32) and info.default_steps == 2
    assert info.weights_digest == second.info.weights_digest
    assert torch.equal(first.sample([0]), second.sample([0]))
    with pytest.raises(SamplerError, match="no random-weights DDPM architecture 'imagenet'"):
        open_sampler(preset="imagenet", kind="ddpm", random_weights=True)
    # An installed directory's own architecture, re-initialised: same shape, other weights.
    reinitialised = open_sampler(tiny_ddpm_dir, random_weights=True)
    assert reinitialised.info.random_weights and reinitialised.info.image_shape == (3, 16, 16)
    assert reinitialised.info.weights_digest != load_ddpm_sampler(tiny_ddpm_dir).info.weights_digest


def test_save_load_round_trip_is_bit_identical(sampler: DDPMSampler) -> None:
    from ddgan.model.ddpm import ddpm_info
    from ddgan.model.ddpm_io import DDPMConfig, build_unet, linear_scheduler_config

    original = DDPMSampler(  # the UNet conftest saved, never written to disk
        build_unet("tiny", num_channels=3, seed=2),
        linear_scheduler_config(),
        ddpm_info(DDPMConfig(3, 16, 1000, 3), device="cpu", dtype="float32", weights_digest="memory"),
    )
    assert torch.equal(original.sample([4, 5], steps=2), sampler.sample([4, 5], steps=2))


def test_an_unreadable_top_level_config_is_not_taken_for_a_ddpm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    assert find_ddpm_layout(tmp_path) is None and not is_ddpm_directory(tmp_path)


def test_saved_ddpm_tree_follows_the_umask_not_mkdtemp(tmp_path: Path, sampler: DDPMSampler) -> None:
    # mkdtemp (staging) and safetensors create 0700 / 0600 entries; a non-root server must read them
    previous = os.umask(0o022)
    try:
        directory = save_ddpm(tmp_path / "ddpm", sampler.unet, sampler.scheduler(), dataset="tiny-test")
    finally:
        os.umask(previous)
    entries = [directory, *directory.rglob("*")]
    modes = {path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777 for path in entries}
    assert modes["ddpm/unet/diffusion_pytorch_model.safetensors"] == 0o644
    assert modes == {name: 0o755 if (tmp_path / name).is_dir() else 0o644 for name in modes}
