"""The DDGAN sampler facade: seeds in, images in [-1, 1] out, over a pluggable chain runner (backend).

A backend is any callable `run_chain(x_T, z, noise) -> x_0` on the sampler's device; `export/` provides
ONNX Runtime and TensorRT runners with the same signature, the torch eager one lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ddgan.model.checkpoint import load_model
from ddgan.model.config import ModelConfig
from ddgan.model.diffusion import SamplingChain
from ddgan.model.ncsnpp import NCSNpp
from ddgan.model.noise import ChainNoise, chain_noise

RunChain = Callable[[Tensor, Tensor, Tensor], Tensor]


class DDGANSampler:
    """Runs the T-step posterior-sampling chain for a list of per-image seeds."""

    kind = "ddgan"

    def __init__(
        self,
        config: ModelConfig,
        run_chain: RunChain,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        backend: str = "torch",
        random_weights: bool = False,
        fixed_batch: int | None = None,
    ) -> None:
        if fixed_batch is not None and fixed_batch < 1:
            raise ValueError(f"fixed_batch must be >= 1, got {fixed_batch}")
        self.config = config
        self.run_chain = run_chain
        self.device = torch.device(device)
        self.dtype = dtype
        self.backend = backend
        self.random_weights = random_weights
        # Kernels choose their algorithm by batch size, so a row can differ in the last bits between batch
        # sizes (never between slots or neighbours at one size): running every chunk padded to `fixed_batch`
        # rows makes an image bit-identical alone or in any batch, at the cost of the padded rows.
        self.fixed_batch = fixed_batch

    @property
    def steps(self) -> int:
        return self.config.diffusion.num_timesteps

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    def noise(self, seeds: Sequence[int]) -> ChainNoise:
        g = self.config.generator
        return chain_noise(seeds, self.image_shape, g.nz, self.steps)

    @torch.inference_mode()
    def sample_from_noise(self, noise: ChainNoise) -> Tensor:
        if self.fixed_batch is None:
            return self.run_chain(*noise.to(self.device, self.dtype)).float().cpu()
        outputs, batch = [], noise.x_T.shape[0]
        for start in range(0, batch, self.fixed_batch):
            rows = min(self.fixed_batch, batch - start)
            index = torch.arange(start, start + self.fixed_batch).clamp(max=batch - 1)  # pad with the last row
            chunk = ChainNoise(noise.x_T[index], noise.z[:, index], noise.noise[:, index])
            outputs.append(self.run_chain(*chunk.to(self.device, self.dtype))[:rows].float().cpu())
        return torch.cat(outputs)

    def sample(self, seeds: Sequence[int]) -> Tensor:
        """Images (B, C, H, W) float32 on the CPU, in [-1, 1]; image i depends on seeds[i] alone."""
        return self.sample_from_noise(self.noise(seeds))


def torch_chain(
    generator: NCSNpp, config: ModelConfig, device: str | torch.device, dtype: torch.dtype
) -> SamplingChain:
    return SamplingChain(generator, config.diffusion).to(device=device, dtype=dtype).eval()


def random_generator(config: ModelConfig, seed: int = 0) -> NCSNpp:
    """An untrained generator with reproducible weights: for speed work only, never for real images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NCSNpp(config.generator).eval()


def load_ddgan_sampler(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DDGANSampler:
    """The torch eager sampler of a model directory."""
    config, generator = load_model(model_dir, device="cpu")
    return DDGANSampler(config, torch_chain(generator, config, device, dtype), device, dtype)


def random_weights_sampler(
    config: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DDGANSampler:
    chain = torch_chain(random_generator(config), config, device, dtype)
    return DDGANSampler(config, chain, device, dtype, random_weights=True)
