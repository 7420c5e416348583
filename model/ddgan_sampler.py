"""The DDGAN sampler: per-image seeds -> explicit chain noise -> a backend's `RunChain` -> images in [-1, 1].

Built by `ddgan.model.sampler.open_sampler`; the backend (torch eager, torch.compile, ONNX Runtime, TensorRT
...) only changes how the chain runs, never the noise it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddgan.model.chain import RunChain
from ddgan.model.config import ModelConfig
from ddgan.model.noise import ChainNoise, chain_noise
from ddgan.model.sampling import Progress, SamplerInfo


class DDGANSampler:
    """Runs the T-step posterior-sampling chain for a list of per-image seeds."""

    def __init__(self, config: ModelConfig, run_chain: RunChain, info: SamplerInfo) -> None:
        self.config = config
        self.run_chain = run_chain
        self._info = info
        self.device = torch.device(info.device)

    @property
    def info(self) -> SamplerInfo:
        return self._info

    def with_micro_batch(self, micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> DDGANSampler:
        """The same chain (one backend, one loaded network) with every forward pass at `micro_batch` rows."""
        return DDGANSampler(self.config, self.run_chain, self.info.with_micro_batch(micro_batch, remainder_sizes))

    def noise(self, seeds: Sequence[int]) -> ChainNoise:
        """The chain's inputs for `seeds` (CPU float32): x_T, then z_k and ξ_k per step, per image."""
        return chain_noise(seeds, self.info.image_shape, self.config.generator.nz, self.info.default_steps)

    @torch.inference_mode()
    def sample_from_noise(self, noise: ChainNoise, progress: Progress | None = None) -> Tensor:
        """x_0 for explicit chain noise, micro-batch by micro-batch (only the last is padded).

        Kernels choose their algorithm by batch size, so a row can differ in the last bits between batch sizes
        (never between slots or neighbours at one size): with `micro_batch` every forward pass has exactly
        that many rows, or one of the `remainder_sizes` verified to give the same bits, and an image is
        bit-identical alone or in any batch.
        """
        rows, steps = noise.x_T.shape[0], self.info.default_steps
        passes = self.info.forward_passes(rows)
        outputs, start = [], 0
        for number, size in enumerate(passes, start=1):
            count = min(size, rows - start)
            index = torch.arange(start, start + size).clamp(max=rows - 1)  # pad with the last row
            inputs = ChainNoise(noise.x_T[index], noise.z[:, index], noise.noise[:, index])
            x_0 = self.run_chain(*inputs.to(self.device, torch.float32))
            outputs.append(x_0[:count].float().cpu())
            start += count
            if progress is not None:
                progress(number * steps, len(passes) * steps)
        return torch.cat(outputs)

    def sample(
        self, seeds: Sequence[int], steps: int | Sequence[int] | None = None, progress: Progress | None = None
    ) -> Tensor:
        self.info.steps_per_image(steps, len(seeds))  # a DDGAN runs its T: anything else is a StepsError
        return self.sample_from_noise(self.noise(seeds), progress)
