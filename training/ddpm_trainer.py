"""Training the DDPM baseline (Ho et al. 2020): a diffusers `UNet2DModel` that predicts ε under DDPM's linear β.

The objective is L_simple (eq. 14): t ~ U{0..T-1}, ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (eq. 4), loss
‖ε - ε_θ(x_t, t)‖². Adam with a linear LR warm-up and gradient clipping as in the paper, and an EMA of the
weights (with the usual (1+n)/(10+n) warm-up so short runs are usable). It runs on the shared loop
(`training.loop`): t and ε of a step are drawn from a seed derived from (seed, rank, step), the data order is the
`BatchStream`'s, so a checkpoint (weights, EMA, Adam moments, step) resumes exactly.

The exported model is the EMA UNet in diffusers format (`model.ddpm_io.save_ddpm`), what `open_sampler` loads.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

from ddgan.model.ddpm import DDPMSampler, ddpm_info
from ddgan.model.ddpm_io import DDPMConfig, save_ddpm
from ddgan.model.noise import image_seeds
from ddgan.model.sampling import Progress
from ddgan.training.datasets import ImageDataset
from ddgan.training.ddpm_config import DDPMTrainConfig
from ddgan.training.distributed import DistContext
from ddgan.training.loop import LoopTrainer, update_ema
from ddgan.training.losses import derive_seed

logger = logging.getLogger(__name__)


def build_unet(config: DDPMTrainConfig) -> UNet2DModel:
    """The ε-prediction U-Net; initialised from the global torch RNG (seed it first)."""
    levels = range(len(config.block_out_channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=config.norm_num_groups,
        dropout=config.dropout,
    )


def build_scheduler(config: DDPMTrainConfig) -> DDPMScheduler:
    """DDPM's forward process: linear β, ε-prediction, the σ_t² = β̃_t ("fixed_small") reverse variance."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule="linear",
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
    )


class DDPMTrainer(LoopTrainer):
    """Holds the U-Net, its EMA and Adam; `train_step` runs one L_simple update."""

    progress_keys = ("loss",)

    def __init__(
        self, config: DDPMTrainConfig, dataset: ImageDataset, out_dir: Path, ctx: DistContext | None = None
    ) -> None:
        shape = (config.channels, config.image_size, config.image_size)
        if tuple(dataset.image_shape) != shape:
            raise ValueError(f"dataset images are {dataset.image_shape}, the model needs {shape}")
        super().__init__(
            config, dataset, out_dir, ctx, batch_size=config.batch_size, seed=config.seed, hflip=config.hflip
        )
        if self.ctx.enabled:
            raise ValueError("the DDPM trainer runs in one process (start it without torchrun)")
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet = build_unet(config)
        self.unet = unet.to(self.device).train()
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.unet.parameters(), lr=config.lr)
        self.alphas_cumprod = build_scheduler(config).alphas_cumprod.to(self.device, torch.float32)

    def planned_steps(self) -> None:
        return None  # a DDPM run is as long as its max_steps

    def learning_rate(self, step: int) -> float:
        """Linear warm-up to `lr` over `warmup_steps` (DDPM used 5000 on CIFAR-10), then constant."""
        if self.config.warmup_steps <= 0:
            return self.config.lr
        return self.config.lr * min(1.0, (step + 1) / self.config.warmup_steps)

    def ema_decay(self, step: int) -> float:
        return min(self.config.ema_decay, (1 + step) / (10 + step))

    def extra_scalars(self) -> dict[str, float]:
        return {"train/lr": self.learning_rate(self.step - 1)}

    def train_step(self, x_0: Tensor) -> dict[str, Tensor]:
        """One optimiser step on a batch x_0 (B, C, H, W) in [-1, 1]; returns the loss and the gradient norm."""
        # t and ε are drawn on the CPU from the step's own generator: the same numbers on any device, on resume.
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, self.ctx.rank, self.step, "ddpm"))
        t = torch.randint(0, self.config.num_train_timesteps, (x_0.shape[0],), generator=generator)
        epsilon = torch.randn(x_0.shape, generator=generator)
        x_0, t, epsilon = x_0.to(self.device), t.to(self.device), epsilon.to(self.device)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x_0 + (1.0 - alpha_bar).sqrt() * epsilon  # eq. 4
        loss = torch.nn.functional.mse_loss(self.unet(x_t, t).sample, epsilon)  # L_simple, eq. 14
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DDPM loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        update_ema(self.ema, self.unet, self.ema_decay(self.step))
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}

    # ------------------------------------------------------------------ state and outputs

    def state_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.state_dict(), "ema": self.ema.state_dict(), "optim": self.optimizer.state_dict()}

    def load_state_dict(self, step: int, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optim"])
        self.step = step

    def sample_images(self, steps: int | None = None, progress: Progress | None = None) -> Tensor:
        """EMA samples of the run's fixed seeds with `steps` denoising steps (default: `sample_steps`)."""
        c = self.config
        steps = steps or c.sample_steps
        model = DDPMConfig(c.channels, c.image_size, c.num_train_timesteps, steps, dataset=c.dataset_name)
        info = ddpm_info(model, device=str(self.device), dtype="float32", weights_digest=f"training step {self.step}")
        sampler = DDPMSampler(self.ema, dict(build_scheduler(c).config), info)
        return sampler.sample(image_seeds(c.sample_seed, c.sample_count), steps=steps, progress=progress)

    def write_final_samples(self, writer: Any, finished: bool) -> None:
        """A finished run's grid at `final_sample_steps` (the serving default, 1000); none for a stopped one.

        Its denoising steps can take minutes on a CPU: a status line says so first, and a progress bar counts them.
        """
        if finished and self.config.final_sample_steps:
            from tqdm import tqdm

            steps = self.config.final_sample_steps
            logger.info("sampling the final grid: %d images x %d denoising steps ...", self.config.sample_count, steps)
            with tqdm(total=steps, desc="final grid", unit="step", disable=None, dynamic_ncols=True) as bar:
                images = self.sample_images(steps, progress=lambda done, _total: bar.update(done - bar.n))
            path = self.write_grid(images, f"final_{steps}steps.png", writer, "samples_ema_final")
            logger.info("final grid (%d denoising steps): %s", steps, path)

    def export(self, directory: Path, trained_on: str) -> Path:
        """Write the EMA U-Net as a diffusers-format model directory with our `ddpm.json`."""
        ema_cpu = copy.deepcopy(self.ema).to("cpu")
        provenance = f"{trained_on}; {self.step} steps, batch {self.config.batch_size}, EMA"
        path = save_ddpm(directory, ema_cpu, build_scheduler(self.config), self.config.dataset_name, provenance)
        logger.info("exported the EMA U-Net (step %d) to %s", self.step, path)
        return path
