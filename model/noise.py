"""Explicit, seedable noise for the samplers.

A request `(seed, n)` gives image i the seed `seed + i`; each image draws all its noise from its own CPU
`torch.Generator` in a fixed order (x_T, then z_k and ξ_k for k = 0..T-1), so an image is bit-identical
whether it is generated alone or inside any batch, and every backend receives the same numbers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

MAX_SEED = 2**63 - 1


class ChainNoise(NamedTuple):
    """Inputs of `SamplingChain`: x_T (B, C, H, W), z (T, B, nz), noise (T, B, C, H, W)."""

    x_T: Tensor
    z: Tensor
    noise: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ChainNoise:
        return ChainNoise(*(t.to(device=device, dtype=dtype) for t in self))


def image_seeds(seed: int, n: int) -> list[int]:
    """Per-image seeds of a request: seed, seed + 1, ..., seed + n - 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= seed <= MAX_SEED - (n - 1):
        raise ValueError(f"seed must be in 0..{MAX_SEED - (n - 1)} for n={n}, got {seed}")
    return [seed + i for i in range(n)]


def random_seed() -> int:
    """A fresh request seed (returned to the caller so the images can be reproduced)."""
    return secrets.randbelow(2**31)


def chain_noise(seeds: Sequence[int], image_shape: tuple[int, int, int], nz: int, num_timesteps: int) -> ChainNoise:
    """Draw the DDGAN chain's noise for each seed on the CPU (float32), stacked into batch tensors."""
    c, h, w = image_shape
    x_T = torch.empty(len(seeds), c, h, w)
    z = torch.empty(num_timesteps, len(seeds), nz)
    noise = torch.empty(num_timesteps, len(seeds), c, h, w)
    for i, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        torch.randn((c, h, w), generator=generator, out=x_T[i])
        for k in range(num_timesteps):
            torch.randn((nz,), generator=generator, out=z[k, i])
            torch.randn((c, h, w), generator=generator, out=noise[k, i])
    return ChainNoise(x_T, z, noise)


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, for samplers that draw step noise lazily (the 1000-step DDPM)."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]
