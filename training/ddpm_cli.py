"""`ddgan train-ddpm`: train the DDPM baseline U-Net on any supported dataset (registered by training.cli).

The run directory is the one `ddgan train` writes (`training.runs`, on the same loop: `training.loop`):
`train_config.json`, `run.json`, `checkpoints/step_N/`, `samples/` (grids from fixed seeds), `tensorboard/` and
`model/`, the latest EMA U-Net in diffusers format (what the server loads), refreshed with every checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

from ddgan.training.ddpm_config import DDPM_PRESETS
from ddgan.training.flags import add_run_flags, loop_overrides, positive_int
from ddgan.training.train_config import DATASET_KINDS

LEGACY_CHECKPOINT = "checkpoint.safetensors"  # what train-ddpm of ddgan-serve 0.2 wrote

# flag dest -> DDPMTrainConfig field, for the recipe flags (the loop's are `training.flags.LOOP_FLAGS`)
_RECIPE_FLAGS = {
    "preset": "preset", "dataset": "dataset_kind", "name": "dataset_name", "image_size": "image_size",
    "channels": "channels", "block_channels": "block_out_channels", "layers_per_block": "layers_per_block",
    "attention_levels": "attention_levels", "dropout": "dropout", "batch_size": "batch_size", "lr": "lr",
    "warmup_steps": "warmup_steps", "ema_decay": "ema_decay", "hflip": "hflip", "seed": "seed",
    "sample_steps": "sample_steps", "final_sample_steps": "final_sample_steps",
}  # fmt: skip


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(",", " ").split()) if text.strip() else ()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-ddpm",
        help="train the DDPM baseline U-Net (diffusers format) on a dataset",
        description="Train a diffusers UNet2DModel with DDPM's L_simple (ε-prediction, linear β, T=1000) and an EMA; "
        "the run's model/ directory is loadable by the server's DDPM sampler.",
    )
    p.add_argument("--preset", choices=sorted(DDPM_PRESETS), help="recipe of a new run (default: mnist)")
    p.add_argument(
        "--steps", type=positive_int, dest="max_steps", help=argparse.SUPPRESS
    )  # the name of --max-steps in ddgan-serve 0.2
    g = add_run_flags(p, "U-Net", "the preset's, 10000 for mnist")
    g.add_argument("--dataset", choices=DATASET_KINDS, help="data format (default: detect)")
    g.add_argument("--name", help="dataset name recorded in ddpm.json (the server's model label)")
    g.add_argument("--image-size", type=positive_int)
    g.add_argument("--channels", type=int, choices=(1, 3))
    g.add_argument("--block-channels", type=_int_tuple, help='U-Net widths per level, e.g. "16,32,64"')
    g.add_argument("--layers-per-block", type=positive_int)
    g.add_argument("--attention-levels", type=_int_tuple, help='levels with self-attention, e.g. "1"')
    g.add_argument("--dropout", type=float)
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    g.add_argument("--seed", type=int)
    g.add_argument("--sample-steps", type=positive_int, help="denoising steps of the periodic grids (resumable)")
    g.add_argument(
        "--final-sample-steps", type=int, help="denoising steps of a finished run's grid (0: none; resumable)"
    )
    p.set_defaults(handler=run_train_ddpm)


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    changes = {field: getattr(args, dest) for dest, field in _RECIPE_FLAGS.items() if getattr(args, dest) is not None}
    return {**changes, **loop_overrides(args)}


def run_train_ddpm(args: argparse.Namespace) -> int:
    from ddgan.training.data import DataError, build_dataset
    from ddgan.training.ddpm_config import DDPMTrainConfig, preset_config
    from ddgan.training.ddpm_trainer import DDPMTrainer
    from ddgan.training.runs import open_run, train_run

    if (args.out / LEGACY_CHECKPOINT).is_file():
        raise SystemExit(
            f"ddgan train-ddpm: {args.out} is a run of ddgan-serve 0.2 ({LEGACY_CHECKPOINT}), which this version "
            "cannot resume; its model/ still serves. Start a new run in another --out"
        )
    config, data = open_run(
        "train-ddpm",
        args,
        DDPMTrainConfig,
        lambda: preset_config(args.preset or "mnist"),
        lambda _base: _changes(args),
        ("--data",),
    )
    try:  # all input checks happen here, before any model is built or anything is written
        dataset = build_dataset(data, config.image_size, config.channels, dataset=config.dataset_kind)
    except DataError as exc:
        raise SystemExit(f"ddgan train-ddpm: {exc}") from exc
    return train_run(
        "train-ddpm",
        args,
        config,
        data,
        dataset,
        lambda ctx: DDPMTrainer(config, dataset, args.out, ctx),
        f"ddgan train-ddpm --preset {config.preset} on {data}",
    )
