"""`ddgan train-ddpm`: train the DDPM baseline U-Net on any supported dataset (registered by training.cli).

A run directory holds `config.json` (the resolved config), `checkpoint.safetensors` (the full run state,
rewritten atomically every `--checkpoint-every` steps / `--checkpoint-minutes` and at exit, including Ctrl-C
and SIGTERM), `model/` (the latest EMA U-Net in diffusers format, what the server loads), `samples/` (PNG
grids from fixed seeds) and `tb/` (TensorBoard logs, when tensorboard is installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ddgan.model.checkpoint import CheckpointError, atomic_write_bytes
from ddgan.model.ddpm import DDPMSampler, ddpm_info
from ddgan.model.ddpm_io import DDPMConfig
from ddgan.model.images import encode_png, make_grid, to_uint8
from ddgan.training.data import DATASET_KINDS, DataError, build_dataset
from ddgan.training.ddpm_trainer import (
    CHECKPOINT_FILE,
    DDPM_PRESETS,
    DDPMTrainConfig,
    DDPMTrainer,
    build_scheduler,
    load_config_from_checkpoint,
    preset_config,
    stream_for,
)

logger = logging.getLogger("ddgan.train_ddpm")
GRID_SEEDS = list(range(64))


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(",", " ").split()) if text.strip() else ()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-ddpm",
        help="train the DDPM baseline U-Net (diffusers format) on a dataset",
        description="Train a diffusers UNet2DModel with DDPM's L_simple (ε-prediction, linear β, T=1000) and an EMA; "
        "the run's model/ directory is loadable by the server's DDPM sampler.",
    )
    p.add_argument("--data", required=True, help="dataset path: .npz, image folder, CIFAR-10 batches or LMDB folder")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--preset", default="mnist", choices=sorted(DDPM_PRESETS), help="recipe (default: mnist)")
    g = p.add_argument_group("recipe overrides (default: the preset's value)")
    g.add_argument("--dataset", choices=DATASET_KINDS, help="data format (default: detect)")
    g.add_argument("--name", help="dataset name recorded in ddpm.json (the server's model label)")
    g.add_argument("--image-size", type=int)
    g.add_argument("--channels", type=int, choices=(1, 3))
    g.add_argument("--block-channels", type=_int_tuple, help='U-Net widths per level, e.g. "16,32,64"')
    g.add_argument("--layers-per-block", type=int)
    g.add_argument("--attention-levels", type=_int_tuple, help='levels with self-attention, e.g. "1"')
    g.add_argument("--dropout", type=float)
    g.add_argument("--steps", type=int, help="total optimiser steps of the run (may grow on --resume)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    g.add_argument("--seed", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-workers", type=int, default=0, help="decoding workers for folder/LMDB data")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); 1 is fastest on a busy machine")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="also checkpoint after this much time")
    p.add_argument("--sample-every", type=int, default=2000, help="steps between sample grids (0: only at the end)")
    p.add_argument("--sample-steps", type=int, default=100, help="denoising steps of the periodic grids")
    p.add_argument("--final-sample-steps", type=int, default=1000, help="denoising steps of the final grid (0: none)")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines / TensorBoard points")
    p.set_defaults(handler=run_train_ddpm)


# flag dest -> config field, for the recipe flags a resumed run must not change
_RECIPE_FLAGS = {
    "dataset": "dataset_kind", "name": "dataset_name", "image_size": "image_size", "channels": "channels",
    "block_channels": "block_out_channels", "layers_per_block": "layers_per_block",
    "attention_levels": "attention_levels", "dropout": "dropout", "batch_size": "batch_size", "lr": "lr",
    "warmup_steps": "warmup_steps", "ema_decay": "ema_decay", "hflip": "hflip", "seed": "seed",
}  # fmt: skip


def _config_from_args(args: argparse.Namespace) -> DDPMTrainConfig:
    return preset_config(
        args.preset,
        dataset_kind=args.dataset,
        dataset_name=args.name,
        image_size=args.image_size,
        channels=args.channels,
        block_out_channels=args.block_channels,
        layers_per_block=args.layers_per_block,
        attention_levels=args.attention_levels,
        dropout=args.dropout,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        hflip=args.hflip,
        seed=args.seed,
        data_source=str(args.data),
    )


class _StopFlag:
    """Turns SIGTERM into a clean stop at the next step boundary (the run then checkpoints)."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, signum: int, frame: Any) -> None:
        logger.warning("signal %d: stopping after this step and writing a checkpoint", signum)
        self.stop = True


def save_grid(trainer: DDPMTrainer, path: Path, steps: int, seeds: list[int] = GRID_SEEDS) -> None:
    """A PNG grid of EMA samples from fixed seeds (same seeds every time, so grids are comparable)."""
    cfg = trainer.config
    ddpm_config = DDPMConfig(cfg.channels, cfg.image_size, cfg.num_train_timesteps, steps)
    info = ddpm_info(ddpm_config, device=str(trainer.device), dtype="float32", weights_digest="training")
    sampler = DDPMSampler(trainer.ema, dict(build_scheduler(cfg).config), info)
    images = sampler.sample(seeds, steps=steps)
    atomic_write_bytes(path, encode_png(make_grid(to_uint8(images), columns=8), compress_level=6))


def _tensorboard(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed (pip install 'ddgan-serve[train]'): no TensorBoard logs")
        return None
    return SummaryWriter(str(directory))


def run_train_ddpm(args: argparse.Namespace) -> int:
    out: Path = args.out
    checkpoint = out / CHECKPOINT_FILE
    try:
        if args.resume:
            config = load_config_from_checkpoint(checkpoint)
            changed = [
                "--" + dest.replace("_", "-")
                for dest, name in _RECIPE_FLAGS.items()
                if getattr(args, dest) is not None and getattr(args, dest) != getattr(config, name)
            ]
            if changed:
                raise CheckpointError(f"--resume keeps the run's recipe; only --steps may change (got {changed})")
            config.steps = args.steps or config.steps
        else:
            if checkpoint.exists():
                raise CheckpointError(
                    f"{out} already holds a run; pass --resume to continue it or choose another --out"
                )
            config = _config_from_args(args)
        config.validate()
        dataset = build_dataset(
            args.data, config.image_size, config.channels, dataset=config.dataset_kind, hflip=config.hflip
        )
    except (DataError, CheckpointError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    config.data_source = str(args.data)
    if args.threads:
        torch.set_num_threads(args.threads)

    trainer = DDPMTrainer(config, device=args.device)
    extra: dict[str, Any] = {"elapsed_s": 0.0}
    if args.resume:
        extra = trainer.load_checkpoint(checkpoint)
        logger.info("resumed %s at step %d", checkpoint, trainer.step)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.json", (json.dumps(config.to_dict(), indent=2) + "\n").encode())
    params = sum(p.numel() for p in trainer.unet.parameters())
    logger.info(
        "DDPM U-Net %s: %.2f M parameters; %d images; run dir %s",
        config.block_out_channels,
        params / 1e6,
        len(dataset),
        out,
    )

    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    writer = _tensorboard(out / "tb")
    batches = stream_for(trainer, dataset, args.num_workers)
    run_start = time.monotonic() - float(extra.get("elapsed_s", 0.0))
    last_checkpoint, window_start, window_images = time.monotonic(), time.monotonic(), 0

    def checkpoint_now() -> None:
        nonlocal last_checkpoint
        extra["elapsed_s"] = time.monotonic() - run_start
        trainer.save_checkpoint(checkpoint, extra)
        trainer.export(out / "model")
        last_checkpoint = time.monotonic()
        logger.info("step %d: checkpoint and model/ written", trainer.step)

    bar = tqdm(
        total=config.steps,
        initial=trainer.step,
        desc="train-ddpm",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    try:
        while trainer.step < config.steps and not stop.stop:
            stats = trainer.train_step(next(batches))
            window_images += config.batch_size
            bar.update(1)
            if trainer.step % args.log_every == 0 or trainer.step == config.steps:
                rate = window_images / max(time.monotonic() - window_start, 1e-9)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{rate:.1f}")
                logger.info(
                    "step %d loss %.4f grad %.3f lr %.2e %.1f img/s",
                    trainer.step,
                    stats["loss"],
                    stats["grad_norm"],
                    stats["lr"],
                    rate,
                )
                if writer is not None:
                    for name, value in (*stats.items(), ("images_per_s", rate)):
                        writer.add_scalar(f"train/{name}", value, trainer.step)
                window_start, window_images = time.monotonic(), 0
            minutes = (time.monotonic() - last_checkpoint) / 60
            if trainer.step % args.checkpoint_every == 0 or minutes >= args.checkpoint_minutes:
                checkpoint_now()
            if args.sample_every and trainer.step % args.sample_every == 0:
                save_grid(trainer, out / "samples" / f"step_{trainer.step:07d}.png", args.sample_steps)
    except KeyboardInterrupt:
        logger.warning("interrupted: writing a checkpoint at step %d", trainer.step)
    finally:
        bar.close()
        checkpoint_now()
        signal.signal(signal.SIGTERM, previous_handler)
        if writer is not None:
            writer.close()
    if trainer.step >= config.steps and args.final_sample_steps:
        grid = out / "samples" / f"final_{args.final_sample_steps}steps.png"
        save_grid(trainer, grid, args.final_sample_steps)
        logger.info("final grid (%d denoising steps): %s", args.final_sample_steps, grid)
    logger.info(
        "done: step %d of %d, %.1f min; model: %s", trainer.step, config.steps, extra["elapsed_s"] / 60, out / "model"
    )
    return 0
