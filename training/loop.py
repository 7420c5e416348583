"""The training loop every trainer runs on: DDGAN / SIDDM (`training.trainer`) and the DDPM baseline
(`training.ddpm_trainer`).

A trainer subclasses `LoopTrainer` and supplies one step, its state, its samples and its export; the loop
supplies the rest, the same for all of them:
  * data: a `BatchStream` whose order and flips are a function of (seed, rank, step); every random draw of a step
    is derived from (seed, rank, step) too (`training.losses.derive_seed`), so a checkpoint needs only weights,
    optimiser states and the step for `--resume` to replay the same steps bit for bit;
  * checkpoints (`training.run_state`: atomic, `checkpoints/step_N`, the newest `keep_checkpoints` kept) every
    `checkpoint_every` steps or `checkpoint_minutes`, on SIGINT / SIGTERM (then stop) and at the end; each one
    also refreshes the exported model (`model/`), which SIGUSR1 asks for in between;
  * a progress bar, TensorBoard scalars and sample grids in `tensorboard/` and `samples/`, a time limit.
Under torchrun, rank 0 writes; every decision to stop or checkpoint is taken by all ranks together.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.images import encode_png, make_grid, to_uint8
from ddgan.training.data import BatchStream
from ddgan.training.datasets import ImageDataset
from ddgan.training.distributed import DistContext, any_rank, mean_over_ranks
from ddgan.training.run_state import load_newest, load_run_state, save_run_state
from ddgan.training.train_config import LoopConfig

logger = logging.getLogger(__name__)

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·θ for every parameter (buffers are not averaged)."""
    ema_params: list[Tensor] = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)


class LoopTrainer(ABC):
    """One process's side of a run: the step counter, the batch stream and the loop (`fit`)."""

    def __init__(
        self,
        config: LoopConfig,
        dataset: ImageDataset,
        out_dir: Path,
        ctx: DistContext | None,
        *,
        batch_size: int,
        seed: int,
        hflip: bool,
    ) -> None:
        self.loop = config
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.out_dir = Path(out_dir)
        self.stream = BatchStream(
            dataset,
            batch_size,
            seed=seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            num_workers=config.num_workers,
            hflip=hflip,
        )
        self.step = 0
        self._stop_signal: int | None = None
        self._export_requested = False

    # ------------------------------------------------------------------ what a trainer supplies

    @abstractmethod
    def planned_steps(self) -> int | None:
        """The run's own length (DDGAN: its epochs), or None when only `max_steps` ends it."""

    @abstractmethod
    def train_step(self, x_0: Tensor) -> dict[str, Tensor]:
        """One optimisation step on a batch in [-1, 1]; advances `step`; returns detached scalars to log."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds besides the step (tensors, numbers, strings; nested freely)."""

    @abstractmethod
    def load_state_dict(self, step: int, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def sample_images(self) -> Tensor:
        """Samples of the EMA model for the run's fixed seeds, (B, C, H, W) in [-1, 1]."""

    @abstractmethod
    def export(self, directory: Path, trained_on: str) -> Path:
        """Write the EMA model as a model directory the server loads."""

    progress_keys: tuple[str, ...] = ()  # logged scalars shown on the progress bar

    def extra_scalars(self) -> dict[str, float]:
        """TensorBoard scalars beyond the step's own (learning rates, epoch)."""
        return {}

    def write_final_samples(self, writer: Any, finished: bool) -> None:
        """The grid written when `fit` ends (by default the periodic one)."""
        self.write_sample_grid(writer)

    # ------------------------------------------------------------------ state

    @property
    def total_steps(self) -> int:
        limits = [n for n in (self.planned_steps(), self.loop.max_steps) if n is not None]
        if not limits:
            raise ValueError(f"{type(self).__name__} needs max_steps")
        return min(limits)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the (rank-independent) state; the others wait so no rank runs ahead of a checkpoint."""
        path = None
        if self.ctx.is_main:
            state = {**self.state_dict(), "world_size": self.ctx.world_size}
            path = save_run_state(self.out_dir, self.step, state, keep=self.loop.keep_checkpoints)
            logger.info("checkpoint at step %d: %s", self.step, path)
        if self.ctx.enabled:
            torch.distributed.barrier()
        return path

    def resume(self, checkpoint: Path | None = None) -> bool:
        """Load `checkpoint`, or else the run's newest checkpoint that loads. False when the run has none yet.

        Newer checkpoints that do not load are skipped with a warning naming each and why; RunStateError
        (one line) when `checkpoint` or every checkpoint of the run is unreadable.
        """
        if checkpoint is not None:
            step, state = load_run_state(checkpoint)
        else:
            newest = load_newest(self.out_dir)
            if newest is None:
                return False
            checkpoint, step, state, skipped = newest
            for path, reason in skipped:
                logger.warning("skipped the checkpoint %s: %s", path.name, reason)
        if state.get("world_size", 1) != self.ctx.world_size:
            logger.warning(
                "resuming a %s-process run with %d processes: the data order differs from the original run",
                state.get("world_size"),
                self.ctx.world_size,
            )
        self.load_state_dict(step, state)
        logger.info("resumed from %s at step %d", checkpoint, step)
        return True

    # ------------------------------------------------------------------ outputs

    def write_grid(self, images: Tensor, name: str, writer: Any = None, tag: str = "samples_ema") -> Path:
        """A PNG grid of `images` under samples/ (and in TensorBoard)."""
        grid = make_grid(to_uint8(images))
        path = self.out_dir / "samples" / name
        atomic_write_bytes(path, encode_png(grid, compress_level=6))
        if writer is not None:
            writer.add_image(tag, grid, self.step, dataformats="HWC")
        return path

    def write_sample_grid(self, writer: Any = None) -> Path:
        path = self.write_grid(self.sample_images(), f"step_{self.step:08d}.png", writer)
        atomic_write_bytes(path.with_name("latest.png"), path.read_bytes())
        return path

    # ------------------------------------------------------------------ the loop

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once (the last checkpoint stays valid)
        self._stop_signal = signum
        logger.warning("received %s: checkpointing and stopping after this step", signal.Signals(signum).name)

    def _on_export_signal(self, _signum: int, _frame: Any) -> None:
        self._export_requested = True

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        wanted: dict[int, Callable[[int, Any], None]] = {}
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            wanted = {signal.SIGINT: self._on_signal, signal.SIGTERM: self._on_signal}
            if hasattr(signal, "SIGUSR1"):
                wanted[signal.SIGUSR1] = self._on_export_signal
        previous = {signum: signal.signal(signum, handler) for signum, handler in wanted.items()}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("TensorBoard is not installed (pip install -e '.[train]'): no logs in tensorboard/")
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step)

    def fit(self, trained_on: str, export_dir: Path | None = None, progress: bool = True) -> str:
        """Train until the last step, the time limit or a signal; checkpoint and export at the end.

        Returns why it stopped: "finished", "time limit" or the signal name. An exception leaves the last
        checkpoint as it was: a half-done step is never saved.
        """
        from tqdm import tqdm

        export_dir = export_dir or self.out_dir / "model"
        writer = self._tensorboard() if self.ctx.is_main else None
        saved_at, exported_at = self.step, None
        reason = "finished"

        def checkpoint_and_export() -> None:
            nonlocal saved_at, exported_at
            if saved_at != self.step:
                self.save_checkpoint()
                saved_at = self.step
            if self.ctx.is_main and exported_at != self.step:
                self.export(export_dir, trained_on)
                exported_at = self.step

        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (progress and self.ctx.is_main),
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
            unit="step",
        )
        try:
            with self._signal_handlers():
                reason = self._run(bar, writer, checkpoint_and_export)
            bar.close()
            checkpoint_and_export()
            if self.ctx.is_main:
                self.write_final_samples(writer, finished=reason == "finished")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        logger.info("stopped at step %d/%d (%s)", self.step, self.total_steps, reason)
        return reason

    def _run(self, bar: Any, writer: Any, checkpoint_and_export: Callable[[], None]) -> str:
        c = self.loop
        images_per_step = self.stream.batch_size * self.ctx.world_size
        start = last = last_checkpoint = time.monotonic()
        rate = 0.0
        batches = self.stream.batches(self.step)
        while self.step < self.total_steps:
            stats = self.train_step(next(batches).to(self.device, non_blocking=True))
            now = time.monotonic()
            current = images_per_step / max(now - last, 1e-9)
            rate, last = (current if rate == 0 else 0.9 * rate + 0.1 * current), now
            bar.update(1)
            if self.step % c.log_every == 0 or self.step == 1:
                self._log(stats, rate, bar, writer)
            if c.sample_every and self.step % c.sample_every == 0 and self.ctx.is_main:
                self.write_sample_grid(writer)
            over_time = c.time_limit_minutes > 0 and now - start > c.time_limit_minutes * 60
            due = c.checkpoint_minutes > 0 and now - last_checkpoint >= c.checkpoint_minutes * 60
            flags = [self._stop_signal is not None or over_time, self._export_requested, due]
            stop, export_now, due = any_rank(flags, self.ctx)
            if self.step % c.checkpoint_every == 0 or stop or export_now or due:
                checkpoint_and_export()
                last_checkpoint = time.monotonic()
            self._export_requested = False
            if stop:
                return "time limit" if self._stop_signal is None else signal.Signals(self._stop_signal).name
        return "finished"

    def _log(self, stats: dict[str, Tensor], rate: float, bar: Any, writer: Any) -> None:
        scalars = mean_over_ranks(stats, self.ctx)
        extra = self.extra_scalars()
        if writer is not None:
            for name, value in scalars.items():
                writer.add_scalar(f"loss/{name}", value, self.step)
            writer.add_scalar("train/images_per_second", rate, self.step)
            for tag, value in extra.items():
                writer.add_scalar(tag, value, self.step)
        shown = {k: f"{scalars[k]:.3f}" for k in self.progress_keys if k in scalars}
        if "train/epoch" in extra:
            shown["epoch"] = f"{extra['train/epoch']:.0f}"
        bar.set_postfix(**shown, img_s=f"{rate:.1f}")
