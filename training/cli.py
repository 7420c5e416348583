"""`ddgan train` (DDGAN / SIDDM) and the other training subcommands' registration.

ddgan train --preset mnist --data ../shared/data/mnist.npz --out runs/mnist [--objective siddm] [overrides]
ddgan train --out runs/mnist --resume                  # continue exactly where the run stopped
ddgan train --out runs/mnist --export-only models/mnist  # EMA generator of the latest checkpoint -> model dir
torchrun --nproc_per_node 2 ddgan.py train ...           # several processes (NCCL on GPU, gloo on CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.config import PRESETS

logger = logging.getLogger(__name__)

# Other training subcommands live in their own modules; each exposes `register(subparsers)`.
OTHER_COMMAND_MODULES = ("ddgan.training.ddpm_cli", "ddgan.training.eval_cli")

RUN_FILE = "run.json"
CONFIG_FILE = "train_config.json"

# flag dest -> TrainConfig field (None: a discriminator field, handled separately)
_OVERRIDES: dict[str, str] = {
    "batch_size": "batch_size",
    "epochs": "num_epochs",
    "max_steps": "max_steps",
    "time_limit": "time_limit_minutes",
    "lr_g": "lr_g",
    "lr_d": "lr_d",
    "beta1": "beta1",
    "beta2": "beta2",
    "lr_min": "lr_min",
    "ema_decay": "ema_decay",
    "r1_gamma": "r1_gamma",
    "lazy_reg": "lazy_reg",
    "lambda_afd": "lambda_afd",
    "denoise_weight": "denoise_weight",
    "dataset": "dataset",
    "seed": "seed",
    "precision": "precision",
    "num_workers": "num_workers",
    "threads": "num_threads",
    "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints",
    "sample_every": "sample_every",
    "log_every": "log_every",
    "sample_count": "sample_count",
}
# Fields a resumed run may change: when and how long it runs, not what it learns per step.
_RESUMABLE = {
    "num_epochs", "max_steps", "time_limit_minutes", "num_workers", "num_threads", "checkpoint_every",
    "keep_checkpoints", "sample_every", "log_every", "sample_count",
}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_train(subparsers)
    for name in OTHER_COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a DDGAN or SIDDM generator",
        description="Train a DDGAN (or SIDDM) generator with the official recipe of a preset; flags override it.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="model preset and recipe (required for a new run)")
    p.add_argument("--data", help="training data: .npz, image folder, CIFAR-10 batches or NVAE LMDB")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, samples, logs, model/)")
    p.add_argument("--objective", choices=("ddgan", "siddm"), default="ddgan")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument(
        "--export-only", type=Path, metavar="DIR", help="write the EMA generator of --out to DIR; no training"
    )
    p.add_argument("--checkpoint", type=Path, help="with --export-only: this checkpoint directory, not the latest")
    p.add_argument("--export", type=Path, metavar="DIR", help="where the final EMA generator goes (default OUT/model)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("recipe overrides (default: the preset's recipe)")
    g.add_argument("--dataset", choices=("auto", "mnist", "stacked_mnist", "image_folder", "cifar10", "lmdb"))
    g.add_argument("--batch-size", type=int, help="images per process and step")
    g.add_argument("--epochs", type=int, help="epochs (the cosine LR schedule spans them)")
    g.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    g.add_argument("--time-limit", type=float, metavar="MINUTES", help="checkpoint, export and stop after this long")
    for flag in ("lr-g", "lr-d", "beta1", "beta2", "lr-min", "ema-decay", "r1-gamma", "lambda-afd", "denoise-weight"):
        g.add_argument(f"--{flag}", type=float)
    g.add_argument("--no-lr-decay", action="store_true", help="constant learning rates")
    g.add_argument("--lazy-reg", type=int, help="apply R1 every N steps")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    g.add_argument("--d-kind", choices=("small", "large"), help="discriminator layout")
    g.add_argument("--d-ngf", type=int, help="discriminator width (official 64)")
    g.add_argument("--num-timesteps", type=int, help="denoising steps T (changes the model)")
    g.add_argument("--seed", type=int)
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    g.add_argument("--num-workers", type=int, help="DataLoader workers for on-disk datasets")
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    for flag in ("checkpoint-every", "keep-checkpoints", "sample-every", "log-every", "sample-count"):
        g.add_argument(f"--{flag}", type=int)
    p.set_defaults(handler=run_train)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    changes = {field: getattr(args, dest) for dest, field in _OVERRIDES.items() if getattr(args, dest) is not None}
    if args.no_lr_decay:
        changes["lr_decay"] = False
    if args.hflip is not None:
        changes["hflip"] = args.hflip
    return changes


def build_config(args: argparse.Namespace) -> Any:
    """The preset's recipe with the flags applied (a new run)."""
    from ddgan.training.train_config import recipe_for

    config = recipe_for(args.preset, args.objective)
    disc = config.discriminator
    if args.d_kind is not None or args.d_ngf is not None:
        disc = dataclasses.replace(disc, kind=args.d_kind or disc.kind, ngf=args.d_ngf or disc.ngf)
    model = config.model
    if args.num_timesteps is not None:
        model = model.replace(diffusion=dataclasses.replace(model.diffusion, num_timesteps=args.num_timesteps))
    return config.replace(discriminator=disc, model=model, **_overrides(args))


def _resumed_config(args: argparse.Namespace, saved: Any) -> Any:
    changes = _overrides(args)
    fixed = sorted(set(changes) - _RESUMABLE)
    if fixed or args.d_kind or args.d_ngf or args.num_timesteps or args.preset and args.preset != saved.model.preset:
        raise SystemExit(
            f"ddgan train --resume: the run's recipe is fixed ({args.out / CONFIG_FILE}); only "
            f"{', '.join(sorted(_RESUMABLE))} may change (got {', '.join(fixed) or 'architecture flags'})"
        )
    return saved.replace(**changes)


def run_train(args: argparse.Namespace) -> int:
    from ddgan.model.config import ConfigError
    from ddgan.training.data import DataError, build_dataset
    from ddgan.training.train_config import TrainConfig

    if args.export_only:
        return export_run(args.out, args.export_only, args.checkpoint)
    config_file = args.out / CONFIG_FILE
    try:
        if args.resume and config_file.is_file():
            config = _resumed_config(args, TrainConfig.from_json(config_file.read_text()))
            run_info = json.loads((args.out / RUN_FILE).read_text())
            data = args.data or run_info["data"]
        else:
            if not args.preset or not args.data:
                nothing_to_resume = f"{args.out} holds no run to resume; " if args.resume else ""
                raise SystemExit(f"ddgan train: {nothing_to_resume}a new run needs --preset and --data")
            if (args.out / "checkpoints").exists() and not args.resume:
                raise SystemExit(f"ddgan train: {args.out} already holds a run; pass --resume or choose another --out")
            config = build_config(args)
            data = args.data
    except ConfigError as exc:
        raise SystemExit(f"ddgan train: {exc}") from exc
    g = config.model.generator
    try:  # all input checks happen here, before any model is built or anything is written
        dataset = build_dataset(
            data, g.image_size, g.num_channels, dataset=config.dataset, hflip=config.hflip, seed=config.seed
        )
    except DataError as exc:
        raise SystemExit(f"ddgan train: {exc}") from exc
    return _train(args, config, dataset, str(data))


def _train(args: argparse.Namespace, config: Any, dataset: Any, data: str) -> int:
    import torch

    from ddgan.training.distributed import init_distributed, shutdown_distributed
    from ddgan.training.trainer import Trainer

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    ctx = init_distributed(args.device)
    try:
        trainer = Trainer(config, dataset, args.out, ctx)
        run_file = args.out / RUN_FILE
        if ctx.is_main:
            atomic_write_bytes(args.out / CONFIG_FILE, (config.to_json() + "\n").encode())
            previous = json.loads(run_file.read_text()) if args.resume and run_file.is_file() else {}
            info = {
                **previous,
                "data": str(Path(data).resolve()),
                "images": len(dataset),
                "world_size": ctx.world_size,
                "device": str(ctx.device),
                "torch": torch.__version__,
            }
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if previous:
                info["resumed"] = [*previous.get("resumed", []), {"at": now, "command": " ".join(sys.argv)}]
            else:
                info.update(command=" ".join(sys.argv), started=now)
            atomic_write_bytes(args.out / RUN_FILE, (json.dumps(info, indent=2) + "\n").encode())
        if args.resume and not trainer.resume():
            logger.info("no checkpoint in %s yet: starting a new run", args.out)
        logger.info(
            "training %s (%s) on %d images: %d steps of %d x %d images, %d steps per epoch",
            config.model.preset, config.objective, len(dataset), trainer.total_steps, config.batch_size,
            ctx.world_size, trainer.stream.steps_per_epoch,
        )  # fmt: skip
        trained_on = f"ddgan train --preset {config.model.preset} --objective {config.objective} on {Path(data).name}"
        reason = trainer.fit(trained_on, export_dir=args.export, progress=not args.no_progress)
    finally:
        shutdown_distributed()
    signal_exit_codes = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number
    return signal_exit_codes.get(reason, 0)


def export_run(run_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> int:
    """`--export-only`: the EMA generator of a run's checkpoint → a model directory (config.json + safetensors)."""
    from ddgan.model.checkpoint import save_model
    from ddgan.training.run_state import RunStateError, load_run_state
    from ddgan.training.train_config import TrainConfig
    from ddgan.training.trainer import find_checkpoint

    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise SystemExit(f"ddgan train --export-only: {run_dir} is not a training run ({CONFIG_FILE} missing)")
    config = TrainConfig.from_json(config_file.read_text())
    try:
        path = checkpoint or find_checkpoint(run_dir)
        step, state = load_run_state(path)
    except (FileNotFoundError, RunStateError) as exc:
        raise SystemExit(f"ddgan train --export-only: {exc}") from exc
    data = json.loads((run_dir / RUN_FILE).read_text()).get("data", "?") if (run_dir / RUN_FILE).is_file() else "?"
    trained_on = (
        f"ddgan train --preset {config.model.preset} --objective {config.objective} on {Path(data).name}; "
        f"{step} steps, EMA {config.ema_decay}"
    )
    save_model(out_dir, config.model.replace(trained_on=trained_on), state["ema"])
    sys.stdout.write(f"exported the EMA generator of {path} (step {step}) to {out_dir}\n")
    return 0
