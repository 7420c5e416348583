"""Seeds: per-image noise streams, and images that do not depend on the rest of their batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.noise import MAX_SEED, chain_noise, image_generators, image_seeds
from ddgan.model.sampler import Sampler, SamplerError, StepsError, open_sampler
from ddgan.model.sampling import forward_passes

from .conftest import TINY_CONFIG

SHAPE, NZ, T = TINY_CONFIG.image_shape, TINY_CONFIG.generator.nz, TINY_CONFIG.diffusion.num_timesteps


def test_image_seeds() -> None:
    assert image_seeds(7, 3) == [7, 8, 9]
    assert image_seeds(MAX_SEED, 1) == [MAX_SEED]
    for seed, n in ((-1, 1), (MAX_SEED, 2), (0, 0)):
        with pytest.raises(ValueError):
            image_seeds(seed, n)


def test_chain_noise_draw_order_is_x_T_then_z_and_xi_per_step() -> None:
    noise = chain_noise([11], SHAPE, NZ, T)
    generator = torch.Generator().manual_seed(11)
    assert torch.equal(noise.x_T[0], torch.randn(SHAPE, generator=generator))
    for k in range(T):
        assert torch.equal(noise.z[k, 0], torch.randn(NZ, generator=generator))
        assert torch.equal(noise.noise[k, 0], torch.randn(SHAPE, generator=generator))


def test_chain_noise_of_an_image_is_the_same_in_any_batch() -> None:
    alone = chain_noise([5], SHAPE, NZ, T)
    batch = chain_noise([9, 5, 1000], SHAPE, NZ, T)
    assert torch.equal(batch.x_T[1], alone.x_T[0])
    assert torch.equal(batch.z[:, 1], alone.z[:, 0])
    assert torch.equal(batch.noise[:, 1], alone.noise[:, 0])
    assert not torch.equal(batch.x_T[0], batch.x_T[1])


def test_image_generators_are_independent_per_seed() -> None:
    first, second = image_generators([3, 3])
    assert torch.equal(torch.randn(4, generator=first), torch.randn(4, generator=second))


@pytest.fixture(scope="module")
def sampler(tiny_model_dir: Path) -> Sampler:
    return open_sampler(tiny_model_dir)


@pytest.mark.parametrize("size", [3, 5, 6, 33, 40])
def test_same_batch_size_any_neighbours_and_slot_is_bit_identical(sampler: Sampler, size: int) -> None:
    # Sizes whose rows fall in a GEMM's remainder block on some CPUs (EPYC Zen 3: 3, 5, 6 differed by 2e-7), or
    # in an elementwise kernel's scalar tail (AVX-512 EPYC Zen 4: the (B, 8) SiLU of the z mapping at 5).
    first = sampler.sample([1, *range(40, 40 + size - 1)])[0]
    for slot in range(1, size):
        seeds = list(range(60, 60 + size))
        seeds[slot] = 1
        assert torch.equal(sampler.sample(seeds)[slot], first), f"slot {slot} of {size}"


def test_forward_passes_pad_only_the_last_pass_to_the_smallest_size_that_holds_it() -> None:
    assert forward_passes(5, None) == [5] and forward_passes(0, 4) == []
    assert forward_passes(9, 4) == [4, 4, 4]  # no remainder sizes: the last pass is a full micro-batch
    assert forward_passes(9, 4, (1, 2)) == [4, 4, 1]
    assert forward_passes(11, 4, (1, 2)) == [4, 4, 4]  # 3 left: no verified size below 4 holds it
    assert forward_passes(1, 32, (2, 8)) == [2]


def test_a_call_runs_full_micro_batches_then_the_smallest_remainder_size(tiny_model_dir: Path) -> None:
    plain = open_sampler(tiny_model_dir)
    assert isinstance(plain, DDGANSampler)
    rows: list[int] = []

    def recording(x_T: torch.Tensor, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        rows.append(x_T.shape[0])
        return plain.run_chain(x_T, z, noise)

    exact = DDGANSampler(plain.config, recording, plain.info.with_micro_batch(4, (1, 2)))
    assert exact.info.remainder_sizes == (1, 2)
    seeds = [10, 11, 12, 13, 14, 15]
    images = exact.sample(seeds)
    assert rows == [4, 2] and images.shape[0] == 6
    torch.testing.assert_close(images, plain.sample(seeds), rtol=0, atol=1e-5)
    rows.clear()
    exact.sample(seeds[:3])
    assert rows == [4]  # 3 rows: no remainder size below 4 holds them, so one padded micro-batch
    with pytest.raises(SamplerError):
        plain.with_micro_batch(4, (4,))  # a remainder size is smaller than the micro-batch


def test_micro_batch_makes_an_image_bit_identical_alone_or_in_any_batch(sampler: Sampler, tiny_model_dir: Path) -> None:
    exact = open_sampler(tiny_model_dir, micro_batch=4)
    assert exact.info.micro_batch == 4 and sampler.info.micro_batch is None
    batch = exact.sample([10, 11, 12, 13, 14, 15])
    assert torch.equal(exact.sample([12]), batch[2:3])
    assert torch.equal(exact.sample([99, 15]), torch.stack([exact.sample([99])[0], batch[5]]))
    # Padding changes nothing but the bits the kernels' batch-size choice would: it matches the plain sampler.
    torch.testing.assert_close(batch, sampler.sample([10, 11, 12, 13, 14, 15]), rtol=0, atol=1e-5)


def test_a_bf16_image_is_bit_identical_alone_or_in_any_batch(tiny_model_dir: Path) -> None:
    """The bf16 CPU paths (float32 FIR upsampling and dense products) keep the batch invariance."""
    exact = open_sampler(tiny_model_dir, micro_batch=4, dtype="bfloat16")
    batch = exact.sample([30, 31, 32, 33, 34])
    assert torch.equal(exact.sample([32]), batch[2:3]) and torch.equal(exact.sample([40, 34])[1], batch[4])
    torch.testing.assert_close(batch, open_sampler(tiny_model_dir).sample([30, 31, 32, 33, 34]), rtol=0, atol=0.1)


def test_with_micro_batch_is_a_new_sampler_on_the_same_chain(sampler: Sampler, tiny_model_dir: Path) -> None:
    exact = sampler.with_micro_batch(3)
    assert exact.info.micro_batch == 3 and sampler.info.micro_batch is None  # the original is unchanged
    assert exact.info == open_sampler(tiny_model_dir, micro_batch=3).info
    batch = exact.sample([20, 21, 22, 23, 24])
    assert torch.equal(exact.sample([24]), batch[4:5])  # alone = in the second, padded micro-batch
    assert torch.equal(batch, open_sampler(tiny_model_dir, micro_batch=3).sample([20, 21, 22, 23, 24]))


def test_without_micro_batch_an_image_alone_matches_its_batch_to_float_rounding(sampler: Sampler) -> None:
    batch = sampler.sample([20, 21, 22, 23, 24])
    torch.testing.assert_close(sampler.sample([22])[0], batch[2], rtol=0, atol=1e-5)
    assert batch.shape == (5, *SHAPE) and batch.dtype == torch.float32
    assert batch.abs().max() <= 1.0
    assert not torch.equal(batch[0], batch[1])


def test_a_ddgan_runs_its_trained_steps_only(sampler: Sampler) -> None:
    info = sampler.info
    assert (info.kind, info.default_steps, info.min_steps, info.max_steps) == ("ddgan", T, T, T)
    assert info.check_steps(None) == T and info.check_steps(T) == T
    assert torch.equal(sampler.sample([3], steps=T), sampler.sample([3]))
    with pytest.raises(StepsError, match=f"always runs its {T} steps"):
        sampler.sample([3], steps=T + 1)


def test_progress_reports_each_micro_batch_and_can_stop_the_call(tiny_model_dir: Path) -> None:
    from ddgan.model.sampler import SamplingStoppedError

    exact = open_sampler(tiny_model_dir, micro_batch=2)
    calls: list[tuple[int, int]] = []
    exact.sample([1, 2, 3, 4, 5], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(T, 3 * T), (2 * T, 3 * T), (3 * T, 3 * T)]

    def stop(done: int, total: int) -> None:
        raise SamplingStoppedError

    with pytest.raises(SamplingStoppedError):
        exact.sample([1, 2, 3], progress=stop)
