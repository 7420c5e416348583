"""The DDGAN / SIDDM trainer (recipe: ddgan-spec §5) on the shared loop (`training.loop`).

Randomness is a pure function of (seed, rank, step): each step's t, ε, ε′, z and ξ come from `derive_seed`, and
the data order of epoch e from (seed, e) (`training.data.BatchStream`). A checkpoint therefore only needs the
weights, the optimiser states, the EMA and the step for `--resume` to replay the same steps bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddgan.model.checkpoint import CheckpointError, load_model, save_model, weights_digest
from ddgan.model.config import ConfigError
from ddgan.model.diffusion import DiffusionSchedule, SamplingChain
from ddgan.model.ncsnpp import NCSNpp
from ddgan.model.noise import chain_noise, image_seeds
from ddgan.training import losses
from ddgan.training.datasets import ImageDataset
from ddgan.training.discriminator import Discriminator
from ddgan.training.distributed import DistContext, average_gradients, broadcast_parameters
from ddgan.training.loop import LoopTrainer, update_ema
from ddgan.training.run_state import checkpoint_dirs
from ddgan.training.train_config import TrainConfig

logger = logging.getLogger(__name__)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def initial_generator(config: TrainConfig) -> NCSNpp:
    """The warm-start generator of `config.init_generator`, checked against the recipe's model and digest.

    ConfigError (one line) when the directory does not load, holds another architecture or schedule, or its
    weights changed since the run recorded them.
    """
    path = Path(str(config.init_generator))
    try:
        init_config, net = load_model(path)
        digest = weights_digest(path)
    except (CheckpointError, OSError) as exc:
        raise ConfigError(f"init_generator: {exc}") from None
    mine = config.model
    for what, theirs, ours in (
        ("generator", init_config.generator, mine.generator),
        ("diffusion schedule", init_config.diffusion, mine.diffusion),
    ):
        if theirs != ours:
            raise ConfigError(f"init_generator: {path} has another {what} than the run's {mine.preset} model")
    if digest != config.init_generator_sha256:
        raise ConfigError(f"init_generator: the weights in {path} changed since the run recorded them (sha256)")
    return net


class Trainer(LoopTrainer):
    """Owns G, D, the EMA of G and both Adam optimisers of one process."""

    progress_keys = ("d_real", "d_fake", "g_adv", "g_afd")

    def __init__(self, config: TrainConfig, dataset: ImageDataset, out_dir: Path, ctx: DistContext | None = None):
        self.image_shape = config.model.image_shape
        if tuple(dataset.image_shape) != self.image_shape:
            raise ValueError(f"dataset images are {dataset.image_shape}, the model needs {self.image_shape}")
        super().__init__(
            config, dataset, out_dir, ctx, batch_size=config.batch_size, seed=config.seed, hflip=config.hflip
        )
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(losses.derive_seed(config.seed, "init"))  # identical initial weights on every rank
            self.generator = NCSNpp(config.model.generator).to(self.device)
            self.discriminator = Discriminator(config.discriminator, self.image_shape[0]).to(self.device)
        if config.init_generator is not None and not checkpoint_dirs(out_dir):  # a resumed run has its own weights
            self.generator.load_state_dict(initial_generator(config).state_dict())
        broadcast_parameters(self.generator, self.ctx)
        broadcast_parameters(self.discriminator, self.ctx)
        self.ema = copy.deepcopy(self.generator).eval()
        _set_requires_grad(self.ema, False)
        self.schedule = DiffusionSchedule(config.model.diffusion).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=betas)
        self.weights = losses.LossWeights(config.r1_gamma, config.lambda_afd, config.denoise_weight)
        # auto: bf16 autocast on CUDA only. On the CPU an explicit bf16 runs CPU autocast, which measured slower
        # than fp32 on the AMD EPYCs here (docs/benchmarks.md, "CPU training"), so auto keeps fp32 there.
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")

    def planned_steps(self) -> int:
        return self.config.num_epochs * self.stream.steps_per_epoch

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def epoch(self, step: int | None = None) -> int:
        return (self.step if step is None else step) // self.stream.steps_per_epoch

    def learning_rates(self, step: int | None = None) -> tuple[float, float]:
        """Cosine annealing to lr_min over num_epochs, constant within an epoch (the reference steps it per epoch)."""
        c = self.config
        if not c.lr_decay:
            return c.lr_g, c.lr_d
        factor = (1 + math.cos(math.pi * self.epoch(step) / c.num_epochs)) / 2
        return c.lr_min + (c.lr_g - c.lr_min) * factor, c.lr_min + (c.lr_d - c.lr_min) * factor

    def extra_scalars(self) -> dict[str, float]:
        return {"train/lr_g": self.learning_rates()[0], "train/epoch": float(self.epoch())}

    def _noise(self, purpose: str) -> losses.StepNoise:
        g = self.config.model.generator
        seed = losses.derive_seed(self.config.seed, self.ctx.rank, self.step, purpose)
        return losses.draw_step_noise(
            seed, self.config.batch_size, self.image_shape, g.nz, self.config.model.diffusion.num_timesteps, self.device
        )

    def train_step(self, x_0: Tensor) -> dict[str, Tensor]:
        """One D step then one G step (ddgan-spec §5), then the EMA update. Returns detached loss terms."""
        lr_g, lr_d = self.learning_rates()
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d
        G, D = self.generator, self.discriminator

        _set_requires_grad(D, True)
        self.opt_d.zero_grad(set_to_none=True)
        apply_r1 = self.step % self.config.lazy_reg == 0
        with self._autocast():
            with torch.no_grad():  # the reference lets G's graph build here and discards those gradients
                transition = losses.transition(G, self.schedule, x_0, self._noise("d"))
            loss_d, stats = losses.discriminator_loss(D, transition, x_0, self.weights, apply_r1)
        loss_d.backward()
        average_gradients(D, self.ctx)
        self.opt_d.step()
        if self.step < self.config.d_warmup_steps:
            self.step += 1
            return {**stats, "loss_d": loss_d.detach()}

        _set_requires_grad(D, False)  # the G step only needs gradients through D's input
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            transition = losses.transition(G, self.schedule, x_0, self._noise("g"))
            loss_g, g_stats = losses.generator_loss(D, transition, self.schedule, self.weights)
        loss_g.backward()
        average_gradients(G, self.ctx)
        self.opt_g.step()
        _set_requires_grad(D, True)
        update_ema(self.ema, self.generator, self.config.ema_decay)  # after every G step; starts equal to θ
        self.step += 1
        return {**stats, **g_stats, "loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict(),
            "optim_g": self.opt_g.state_dict(),
            "optim_d": self.opt_d.state_dict(),
        }

    def load_state_dict(self, step: int, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["optim_g"])
        self.opt_d.load_state_dict(state["optim_d"])
        self.step = step

    # ------------------------------------------------------------------ outputs

    @torch.no_grad()
    def sample_images(self) -> Tensor:
        """EMA samples for the fixed seeds sample_seed + i (the server's seed convention), (B,C,H,W) in [-1,1]."""
        c = self.config
        seeds = image_seeds(c.sample_seed, c.sample_count)
        noise = chain_noise(seeds, self.image_shape, c.model.generator.nz, c.model.diffusion.num_timesteps)
        chain = SamplingChain(self.ema, c.model.diffusion)
        return chain(*noise.to(self.device)).float().cpu()

    def export(self, directory: Path, trained_on: str) -> Path:
        """Write the EMA generator as a model directory the server loads (model.checkpoint format)."""
        config = self.config.model.replace(trained_on=f"{trained_on}; {self.step} steps, EMA {self.config.ema_decay}")
        path = save_model(directory, config, self.ema.state_dict())
        logger.info("exported the EMA generator (step %d) to %s", self.step, path)
        return path
