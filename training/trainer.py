"""The DDGAN / SIDDM training loop (recipe: ddgan-spec §5), with exact resume, sample grids and export.

Randomness is a pure function of (seed, rank, step): each step's t, ε, ε′, z and ξ come from `derive_seed`, and
the data order of epoch e from (seed, e) (`training.data.BatchStream`). A checkpoint therefore only needs the
weights, the optimiser states, the EMA and the step for `--resume` to replay the same steps bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddgan.model.checkpoint import atomic_write_bytes, save_model
from ddgan.model.diffusion import DiffusionSchedule, SamplingChain
from ddgan.model.images import encode_png, make_grid, to_uint8
from ddgan.model.ncsnpp import NCSNpp
from ddgan.model.noise import chain_noise, image_seeds
from ddgan.training import losses
from ddgan.training.data import BatchStream, ImageDataset
from ddgan.training.discriminator import Discriminator
from ddgan.training.distributed import DistContext, any_rank, average_gradients, broadcast_parameters, mean_over_ranks
from ddgan.training.run_state import latest_checkpoint, load_run_state, save_run_state
from ddgan.training.train_config import TrainConfig

logger = logging.getLogger(__name__)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class Trainer:
    """Owns G, D, the EMA of G, both Adam optimisers and the step counter of one process."""

    def __init__(self, config: TrainConfig, dataset: ImageDataset, out_dir: Path, ctx: DistContext | None = None):
        self.config = config
        self.ctx = ctx or DistContext()
        self.out_dir = Path(out_dir)
        self.device = self.ctx.device
        self.image_shape = config.model.image_shape
        if tuple(dataset.image_shape) != self.image_shape:
            raise ValueError(f"dataset images are {dataset.image_shape}, the model needs {self.image_shape}")
        self.stream = BatchStream(
            dataset,
            config.batch_size,
            seed=config.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            num_workers=config.num_workers,
        )
        self.total_steps = config.num_epochs * self.stream.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(losses.derive_seed(config.seed, "init"))  # identical initial weights on every rank
            self.generator = NCSNpp(config.model.generator).to(self.device)
            self.discriminator = Discriminator(config.discriminator, self.image_shape[0]).to(self.device)
        broadcast_parameters(self.generator, self.ctx)
        broadcast_parameters(self.discriminator, self.ctx)
        self.ema = copy.deepcopy(self.generator).eval()
        _set_requires_grad(self.ema, False)
        self.schedule = DiffusionSchedule(config.model.diffusion).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=betas)
        self.weights = losses.LossWeights(config.r1_gamma, config.lambda_afd, config.denoise_weight)
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if use_bf16 and self.device.type != "cuda":
            raise ValueError("bf16 autocast is for CUDA; train in fp32 on the CPU")
        self.use_bf16 = use_bf16
        self.step = 0
        self._stop_signal: int | None = None
        self._export_requested = False

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
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
        siddm = self.config.objective == "siddm"
        G, D = self.generator, self.discriminator

        _set_requires_grad(D, True)
        self.opt_d.zero_grad(set_to_none=True)
        apply_r1 = self.step % self.config.lazy_reg == 0
        d_loss = losses.siddm_discriminator_loss if siddm else losses.ddgan_discriminator_loss
        with self._autocast():
            loss_d, stats = d_loss(G, D, self.schedule, x_0, self._noise("d"), self.weights, apply_r1)
        loss_d.backward()
        average_gradients(D, self.ctx)
        self.opt_d.step()

        _set_requires_grad(D, False)  # the G step only needs gradients through D's input
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            if siddm:
                loss_g, g_stats = losses.siddm_generator_loss(G, D, self.schedule, x_0, self._noise("g"), self.weights)
            else:
                loss_g, g_stats = losses.ddgan_generator_loss(G, D, self.schedule, x_0, self._noise("g"))
        loss_g.backward()
        average_gradients(G, self.ctx)
        self.opt_g.step()
        _set_requires_grad(D, True)
        self.update_ema()
        self.step += 1
        return {**stats, **g_stats, "loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·θ after every G step (the EMA starts equal to θ)."""
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.generator.parameters()], 1 - self.config.ema_decay)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict(),
            "optim_g": self.opt_g.state_dict(),
            "optim_d": self.opt_d.state_dict(),
            "world_size": self.ctx.world_size,
        }

    def load_state_dict(self, step: int, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["optim_g"])
        self.opt_d.load_state_dict(state["optim_d"])
        if state.get("world_size", 1) != self.ctx.world_size:
            logger.warning(
                "resuming a %s-process run with %d processes: the data order differs from the original run",
                state.get("world_size"),
                self.ctx.world_size,
            )
        self.step = step

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the (rank-independent) state; the others wait so no rank runs ahead of a checkpoint."""
        path = None
        if self.ctx.is_main:
            path = save_run_state(self.out_dir, self.step, self.state_dict(), keep=self.config.keep_checkpoints)
            logger.info("checkpoint at step %d: %s", self.step, path)
        if self.ctx.enabled:
            torch.distributed.barrier()
        return path

    def resume(self, checkpoint: Path | None = None) -> bool:
        """Load `checkpoint` (default: the run's latest). False when the run has none yet."""
        checkpoint = checkpoint or latest_checkpoint(self.out_dir)
        if checkpoint is None:
            return False
        step, state = load_run_state(checkpoint)
        self.load_state_dict(step, state)
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, step, self.epoch())
        return True

    # ------------------------------------------------------------------ outputs

    @torch.no_grad()
    def sample_images(self, count: int | None = None, seed: int | None = None) -> Tensor:
        """EMA samples for the fixed seeds seed..seed+count-1 (the server's seed convention), (B,C,H,W) in [-1,1]."""
        c = self.config
        seeds = image_seeds(c.sample_seed if seed is None else seed, count or c.sample_count)
        noise = chain_noise(seeds, self.image_shape, c.model.generator.nz, c.model.diffusion.num_timesteps)
        chain = SamplingChain(self.ema, c.model.diffusion)
        return chain(*noise.to(self.device)).float().cpu()

    def write_sample_grid(self, writer: Any = None) -> Path:
        grid = make_grid(to_uint8(self.sample_images()))
        path = self.out_dir / "samples" / f"step_{self.step:08d}.png"
        png = encode_png(grid, compress_level=6)
        atomic_write_bytes(path, png)
        atomic_write_bytes(self.out_dir / "samples" / "latest.png", png)
        if writer is not None:
            writer.add_image("samples_ema", grid, self.step, dataformats="HWC")
        return path

    def export(self, directory: Path, trained_on: str) -> Path:
        """Write the EMA generator as a model directory the server loads (model.checkpoint format)."""
        config = self.config.model.replace(trained_on=f"{trained_on}; {self.step} steps, EMA {self.config.ema_decay}")
        path = save_model(directory, config, self.ema.state_dict())
        logger.info("exported the EMA generator (step %d) to %s", self.step, path)
        return path

    # ------------------------------------------------------------------ the loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once (the last checkpoint stays valid)
        self._stop_signal = signum
        logger.warning("received %s: checkpointing and stopping after this step", signal.Signals(signum).name)

    def _on_export_signal(self, _signum: int, _frame: Any) -> None:
        self._export_requested = True

    def fit(self, trained_on: str, export_dir: Path | None = None, progress: bool = True) -> str:
        """Train until the last step, max_steps, the time limit or a signal; checkpoint and export at the end.

        Returns why it stopped: "finished", "time limit" or the signal name.
        """
        c = self.config
        export_dir = export_dir or self.out_dir / "model"
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            wanted = {signal.SIGINT: self._on_signal, signal.SIGTERM: self._on_signal}
            if hasattr(signal, "SIGUSR1"):
                wanted[signal.SIGUSR1] = self._on_export_signal
            for signum, handler in wanted.items():
                handlers[signum] = signal.signal(signum, handler)
        writer = None
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step)
        from tqdm import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (progress and self.ctx.is_main),
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
            unit="step",
        )
        start, reason = time.monotonic(), "finished"
        images_per_step = c.batch_size * self.ctx.world_size
        rate, last = 0.0, time.monotonic()
        batches = self.stream.batches(self.step)
        last_saved = self.step
        try:
            while self.step < self.total_steps:
                x_0 = next(batches).to(self.device, non_blocking=True)
                stats = self.train_step(x_0)
                now = time.monotonic()
                rate = (
                    images_per_step / (now - last) if rate == 0 else 0.9 * rate + 0.1 * images_per_step / (now - last)
                )
                last = now
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == 1:
                    scalars = mean_over_ranks(stats, self.ctx)
                    if writer is not None:
                        for name, value in scalars.items():
                            writer.add_scalar(f"loss/{name}", value, self.step)
                        writer.add_scalar("train/images_per_second", rate, self.step)
                        writer.add_scalar("train/lr_g", self.learning_rates()[0], self.step)
                        writer.add_scalar("train/epoch", self.epoch(), self.step)
                    shown = {k: f"{v:.3f}" for k, v in scalars.items() if k in ("d_real", "d_fake", "g_adv", "g_afd")}
                    bar.set_postfix(**shown, img_s=f"{rate:.1f}", epoch=self.epoch())
                if self.step % c.sample_every == 0 and self.ctx.is_main:
                    self.write_sample_grid(writer)
                over_time = c.time_limit_minutes > 0 and now - start > c.time_limit_minutes * 60
                stop = any_rank(self._stop_signal is not None or over_time, self.ctx)
                export_now = any_rank(self._export_requested, self.ctx)
                if self.step % c.checkpoint_every == 0 or stop or export_now:
                    self.save_checkpoint()
                    last_saved = self.step
                if export_now:
                    self._export_requested = False
                    if self.ctx.is_main:
                        self.export(export_dir, trained_on)
                if stop:
                    reason = "time limit" if over_time else signal.Signals(self._stop_signal or 15).name
                    break
        finally:  # an exception keeps the last checkpoint: a half-done step must not be saved
            bar.close()
            for signum, previous in handlers.items():
                signal.signal(signum, previous)
        if self.step != last_saved:
            self.save_checkpoint()
        if self.ctx.is_main:
            self.write_sample_grid(writer)
            self.export(export_dir, trained_on)
        if writer is not None:
            writer.close()
        logger.info("stopped at step %d/%d (%s)", self.step, self.total_steps, reason)
        return reason


def find_checkpoint(run_dir: Path) -> Path:
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint (looked for {run_dir}/checkpoints/latest.json)")
    return path
