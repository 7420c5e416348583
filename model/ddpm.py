"""The DDPM baseline sampler: ancestral sampling (Ho et al. 2020, Alg. 2) over a diffusers `UNet2DModel`.

It exists to compare DDGAN's few steps against a real 1000-step DDPM under the same seed conventions: image i
draws x_T and then one variance noise ξ per denoising step from its own CPU generator (seed + i), so an image is
the same alone or in any batch. Images of one call may ask for different step counts: every image follows its
own strided schedule, each iteration evaluates the UNet once on the images still running (each at its own
timestep), and images leave the batch when their schedule ends, so a call costs the sum of its images' steps.
Built by `ddgan.model.sampler.open_sampler`; directories are read by `ddgan.model.ddpm_io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

from ddgan.model.ddpm_io import DDPMConfig
from ddgan.model.noise import image_generators
from ddgan.model.sampling import Progress, SamplerInfo


def ddpm_info(
    config: DDPMConfig,
    *,
    device: str,
    dtype: str,
    weights_digest: str,
    micro_batch: int | None = None,
    random_weights: bool = False,
    default_steps: int | None = None,
    max_steps: int | None = None,
) -> SamplerInfo:
    """What a DDPM sampler is: any step count up to its training schedule (or `max_steps`, if lower)."""
    ceiling = min(config.num_train_timesteps, max_steps or config.num_train_timesteps)
    return SamplerInfo(
        kind="ddpm",
        dataset=config.dataset,
        image_shape=config.image_shape,
        default_steps=default_steps or min(config.default_steps, ceiling),
        min_steps=1,
        max_steps=ceiling,
        backend="torch",
        device=device,
        dtype=dtype,
        micro_batch=micro_batch,
        random_weights=random_weights,
        weights_digest=weights_digest,
    )


class DDPMSampler:
    """Ancestral DDPM sampling of a UNet for a list of per-image seeds and step counts."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict[str, Any], info: SamplerInfo) -> None:
        self._info = info
        self.device = torch.device(info.device)
        self.dtype = getattr(torch, info.dtype)
        # nn.Module.to: diffusers' override warns about float32-only modules, which UNet2DModel does not have.
        self.unet = torch.nn.Module.to(unet, device=self.device, dtype=self.dtype).eval()
        self.scheduler_config = dict(scheduler_config)

    @property
    def info(self) -> SamplerInfo:
        return self._info

    def with_micro_batch(self, micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> DDPMSampler:
        """The same UNet (shared, not copied) with every UNet call padded to `micro_batch` rows."""
        return DDPMSampler(self.unet, self.scheduler_config, self.info.with_micro_batch(micro_batch, remainder_sizes))

    def scheduler(self, steps: int | None = None) -> DDPMScheduler:
        """A fresh scheduler set to `steps` (a new one per call: `set_timesteps` mutates it)."""
        scheduler = DDPMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(self.info.check_steps(steps))
        return scheduler

    @torch.inference_mode()
    def sample(
        self, seeds: Sequence[int], steps: int | Sequence[int] | None = None, progress: Progress | None = None
    ) -> Tensor:
        """Images (B, C, H, W) float32 on the CPU in [-1, 1]; image i depends on seeds[i] and its steps alone.

        Fewer steps than the training schedule use the scheduler's strided timesteps (its `timestep_spacing`).
        `progress(done, total)` is called after every denoising iteration (total: the largest step count).
        """
        per_image = self.info.steps_per_image(steps, len(seeds))
        schedulers = {count: self.scheduler(count) for count in set(per_image)}
        timesteps = {count: [int(t) for t in s.timesteps] for count, s in schedulers.items()}
        generators = image_generators(seeds)
        x_T = torch.stack([torch.randn(self.info.image_shape, generator=g) for g in generators])
        # The chain state and the update stay float32 whatever the UNet dtype: 1000 reduced-precision
        # updates would drift. Each step draws each image's ξ (float32, CPU) from that image's generator.
        x_t = x_T.to(self.device)
        iterations = max(per_image)
        for k in range(iterations):
            active = [i for i, count in enumerate(per_image) if k < count]
            t_rows = torch.tensor([timesteps[per_image[i]][k] for i in active], dtype=torch.long)
            epsilon = self._predict(x_t[active], t_rows.to(self.device))
            for count, scheduler in schedulers.items():
                rows = [j for j, i in enumerate(active) if per_image[i] == count]
                if not rows:
                    continue
                index = [active[j] for j in rows]
                update = scheduler.step(
                    epsilon[rows], timesteps[count][k], x_t[index], generator=[generators[i] for i in index]
                )
                x_t[index] = update.prev_sample
            if progress is not None:
                progress(k + 1, iterations)
        return x_t.clamp(-1.0, 1.0).cpu()

    def _predict(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The UNet's output in float32, each row at its own timestep; in micro-batches when one is set.

        CPU/GPU kernels pick their algorithm by tensor shape, so a row's result can change in the last bits
        with the batch size (never with its slot or its neighbours at a fixed size). Padding every call to
        `micro_batch` rows makes each image bit-identical alone or in any batch, at the cost of the padding.
        """
        if self.info.micro_batch is None:
            return self.unet(x_t.to(self.dtype), t).sample.float()
        chunks, start = [], 0
        for size in self.info.forward_passes(x_t.shape[0]):
            rows, times = x_t[start : start + size], t[start : start + size]
            count = rows.shape[0]
            if count < size:
                rows = torch.cat([rows, rows[:1].expand(size - count, *rows.shape[1:])])
                times = torch.cat([times, times[:1].expand(size - count)])
            chunks.append(self.unet(rows.to(self.dtype), times).sample.float()[:count])
            start += count
        return torch.cat(chunks)
