"""Seeds: per-image noise streams, and images that do not depend on the rest of their batch."""

from __future__ import annotations

import pytest
import torch

from ddgan.model.noise import MAX_SEED, chain_noise, image_generators, image_seeds
from ddgan.model.sampler import DDGANSampler, random_weights_sampler

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
def sampler() -> DDGANSampler:
    return random_weights_sampler(TINY_CONFIG)


def test_same_batch_size_any_neighbours_and_slot_is_bit_identical(sampler: DDGANSampler) -> None:
    a = sampler.sample([1, 2, 3])
    b = sampler.sample([40, 41, 1])
    assert torch.equal(a[0], b[2])


def test_fixed_batch_makes_an_image_bit_identical_alone_or_in_any_batch(sampler: DDGANSampler) -> None:
    exact = random_weights_sampler(TINY_CONFIG)
    exact.fixed_batch = 4
    batch = exact.sample([10, 11, 12, 13, 14, 15])
    assert torch.equal(exact.sample([12]), batch[2:3])
    assert torch.equal(exact.sample([99, 15]), torch.stack([exact.sample([99])[0], batch[5]]))
    # Padding changes nothing but the bits the kernels' batch-size choice would: it matches the plain sampler.
    torch.testing.assert_close(batch, sampler.sample([10, 11, 12, 13, 14, 15]), rtol=0, atol=1e-5)


def test_without_fixed_batch_an_image_alone_matches_its_batch_to_float_rounding(sampler: DDGANSampler) -> None:
    batch = sampler.sample([20, 21, 22, 23, 24])
    torch.testing.assert_close(sampler.sample([22])[0], batch[2], rtol=0, atol=1e-5)
    assert batch.shape == (5, *SHAPE) and batch.dtype == torch.float32
    assert batch.abs().max() <= 1.0
    assert not torch.equal(batch[0], batch[1])
