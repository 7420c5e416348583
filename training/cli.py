"""`ddgan train` (DDGAN / SIDDM) and the registration of the other training commands.

ddgan train --preset mnist --data ../shared/data/mnist.npz --out runs/mnist [--objective siddm] [overrides]
ddgan train --out runs/mnist --resume                  # continue exactly where the run stopped
ddgan train --out runs/mnist --export-only models/mnist  # EMA generator of the latest checkpoint -> model dir
torchrun --nproc_per_node 2 -m ddgan train ...           # several processes (NCCL on GPU, gloo on CPU)

Parsers are light (no torch import); the shared flags are `training.flags`, the run directory `training.runs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

from ddgan.model.config import PRESETS
from ddgan.training.flags import add_run_flags, loop_overrides, positive_int
from ddgan.training.train_config import DATASET_KINDS, OBJECTIVES, PRECISIONS

# Other training subcommands live in their own modules; each exposes `register(subparsers)`.
OTHER_COMMAND_MODULES = ("ddgan.training.ddpm_cli", "ddgan.training.eval_cli")

# flag dest -> TrainConfig field, for the recipe flags (the loop's are `training.flags.LOOP_FLAGS`)
_RECIPE_FLAGS: dict[str, str] = {
    "objective": "objective",
    "batch_size": "batch_size",
    "epochs": "num_epochs",
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
    "hflip": "hflip",
    "d_warmup_steps": "d_warmup_steps",
}


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
    p.add_argument("--objective", choices=OBJECTIVES, help="ddgan (default for a new run) or siddm")
    p.add_argument(
        "--export-only", type=Path, metavar="DIR", help="write the EMA generator of --out to DIR; no training"
    )
    p.add_argument("--checkpoint", type=Path, help="with --export-only: this checkpoint directory, not the latest")
    g = add_run_flags(p, "generator", "every epoch")
    g.add_argument("--dataset", choices=DATASET_KINDS, help="data format (default: detect)")
    g.add_argument("--batch-size", type=positive_int, help="images per process and step")
    g.add_argument("--epochs", type=positive_int, help="epochs (the cosine LR schedule spans them; resumable)")
    for flag in ("lr-g", "lr-d", "beta1", "beta2", "lr-min", "ema-decay", "r1-gamma", "lambda-afd", "denoise-weight"):
        g.add_argument(f"--{flag}", type=float)
    g.add_argument("--no-lr-decay", action="store_true", help="constant learning rates")
    g.add_argument("--lazy-reg", type=positive_int, help="apply R1 every N steps")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    g.add_argument("--d-kind", choices=("small", "large"), help="discriminator layout")
    g.add_argument("--d-ngf", type=positive_int, help="discriminator width (official 64)")
    g.add_argument("--num-timesteps", type=positive_int, help="denoising steps T (changes the model)")
    g.add_argument(
        "--generator",
        nargs="+",
        metavar="KEY=VALUE",
        help="generator architecture by the official option names, e.g. num_channels_dae=16 ch_mult=1,1,2",
    )
    g.add_argument(
        "--init-generator",
        type=Path,
        metavar="MODEL_DIR",
        help="warm start: G and its EMA start from this model directory's generator (same architecture); D fresh",
    )
    g.add_argument("--d-warmup-steps", type=int, metavar="N", help="first N steps train only D (for warm starts)")
    g.add_argument("--seed", type=int)
    g.add_argument("--precision", choices=PRECISIONS)
    p.set_defaults(handler=run_train)


def _changes(args: argparse.Namespace, base: Any) -> dict[str, Any]:
    """The TrainConfig fields the flags set, relative to `base` (the preset's recipe, or a resumed run's)."""
    changes = {field: getattr(args, dest) for dest, field in _RECIPE_FLAGS.items() if getattr(args, dest) is not None}
    changes.update(loop_overrides(args))
    if args.no_lr_decay:
        changes["lr_decay"] = False
    if args.init_generator is not None:
        changes["init_generator"] = str(args.init_generator.resolve())
        changes["init_generator_sha256"] = _weights_sha256(args.init_generator)
    if args.d_kind is not None or args.d_ngf is not None:
        disc = base.discriminator
        changes["discriminator"] = dataclasses.replace(disc, kind=args.d_kind or disc.kind, ngf=args.d_ngf or disc.ngf)
    if args.preset is not None or args.num_timesteps is not None or args.generator:
        from ddgan.model.config import get_preset

        model = get_preset(args.preset) if args.preset else base.model
        if args.num_timesteps is not None:
            model = model.replace(diffusion=dataclasses.replace(model.diffusion, num_timesteps=args.num_timesteps))
        if args.generator:
            model = model.replace(generator=generator_overrides(model.generator, args.generator))
        changes["model"] = model
    return changes


def _weights_sha256(model_dir: Path) -> str:
    from ddgan.model.checkpoint import WEIGHTS_FILE, weights_digest

    if not (model_dir / WEIGHTS_FILE).is_file():
        raise SystemExit(f"ddgan train: --init-generator: {model_dir} is not a model directory ({WEIGHTS_FILE})")
    return weights_digest(model_dir)


def generator_overrides(generator: Any, items: list[str]) -> Any:
    """`generator` with `--generator KEY=VALUE ...` applied; names and values read as the official argparse does."""
    from ddgan.model.config import ConfigError
    from ddgan.model.official_args import OfficialArgsError, parse_assignments, parse_options

    fields = sorted(f.name for f in dataclasses.fields(generator))
    try:
        values = parse_options(parse_assignments(items, flag="--generator"))
        if unknown := sorted(set(values) - set(fields)):
            raise SystemExit(
                f"ddgan train: --generator: {', '.join(unknown)} is not a generator option; choose from "
                f"{', '.join(fields)}"
            )
        return dataclasses.replace(generator, **values)
    except (OfficialArgsError, ConfigError) as exc:
        raise SystemExit(f"ddgan train: {exc}") from None


def run_train(args: argparse.Namespace) -> int:
    from ddgan.model.config import ConfigError
    from ddgan.training.data import DataError, build_dataset
    from ddgan.training.run_state import checkpoint_dirs
    from ddgan.training.runs import open_run, train_run
    from ddgan.training.train_config import TrainConfig, recipe_for
    from ddgan.training.trainer import Trainer, initial_generator

    if args.export_only:
        return export_run(args.out, args.export_only, args.checkpoint)
    config, data = open_run(
        "train",
        args,
        TrainConfig,
        lambda: recipe_for(args.preset, args.objective or "ddgan"),
        lambda base: _changes(args, base),
        ("--preset", "--data"),
    )
    g = config.model.generator
    try:  # all input checks happen here, before any model is built or anything is written
        dataset = build_dataset(data, g.image_size, g.num_channels, dataset=config.dataset, seed=config.seed)
        if config.init_generator is not None and not checkpoint_dirs(args.out):  # the trainer's own test
            initial_generator(config)
    except (DataError, ConfigError) as exc:
        raise SystemExit(f"ddgan train: {exc}") from exc
    return train_run(
        "train",
        args,
        config,
        data,
        dataset,
        lambda ctx: Trainer(config, dataset, args.out, ctx),
        _trained_on(config, data),
        planned_limit=f"--epochs (now {config.num_epochs})",
    )


def _trained_on(config: Any, data: str) -> str:
    warm = f", warm-started from {Path(config.init_generator).name}" if config.init_generator else ""
    return f"ddgan train --preset {config.model.preset} --objective {config.objective} on {Path(data).name}{warm}"


def export_run(run_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> int:
    """`--export-only`: the EMA generator of a run's checkpoint → a model directory (config.json + safetensors)."""
    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import ConfigError
    from ddgan.training.run_state import RunStateError, load_newest, load_run_state
    from ddgan.training.runs import CONFIG_FILE, run_data
    from ddgan.training.train_config import TrainConfig

    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        raise SystemExit(f"ddgan train --export-only: {run_dir} is not a training run ({CONFIG_FILE} missing)")
    try:
        config = TrainConfig.from_json(config_file.read_text())
        if checkpoint is not None:
            path, (step, state) = checkpoint, load_run_state(checkpoint)
        elif (newest := load_newest(run_dir)) is None:
            raise SystemExit(f"ddgan train --export-only: {run_dir} has no checkpoint yet")
        else:
            path, step, state, skipped = newest
            for skipped_path, reason in skipped:
                sys.stderr.write(f"ddgan train --export-only: skipped the checkpoint {skipped_path.name}: {reason}\n")
    except (ConfigError, RunStateError) as exc:
        raise SystemExit(f"ddgan train --export-only: {exc}") from exc
    trained_on = f"{_trained_on(config, run_data(run_dir))}; {step} steps, EMA {config.ema_decay}"
    save_model(out_dir, config.model.replace(trained_on=trained_on), state["ema"])
    sys.stdout.write(f"exported the EMA generator of {path} (step {step}) to {out_dir}\n")
    return 0
