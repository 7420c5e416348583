"""The flags the training commands share, defined once so that one name means one thing in every command.

`ddgan train`, `ddgan train-ddpm`, `ddgan train-classifier`, `ddgan eval` and `ddgan toy` all take `--threads`
and `--no-progress`; the two run-directory trainers also share `--out`, `--resume`, `--max-steps`, the loop's
cadence flags and `--device`. Light on purpose: parsers are built without importing torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# flag dest -> LoopConfig field (training.train_config): the flags of how a run is driven, resumable
LOOP_FLAGS = {
    "max_steps": "max_steps",
    "time_limit": "time_limit_minutes",
    "checkpoint_every": "checkpoint_every",
    "checkpoint_minutes": "checkpoint_minutes",
    "keep_checkpoints": "keep_checkpoints",
    "sample_every": "sample_every",
    "sample_count": "sample_count",
    "log_every": "log_every",
    "num_workers": "num_workers",
    "threads": "num_threads",
}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (`--max-steps 0` is refused, not read as "no limit")."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_common_flags(parser: argparse.ArgumentParser, threads_default: int | None = None) -> None:
    """`--threads` and `--no-progress`, the flags every training and evaluation command has."""
    default = "default: the CPUs this process may use" if threads_default is None else threads_default
    parser.add_argument(
        "--threads", type=positive_int, default=threads_default, help=f"CPU threads (torch.set_num_threads; {default})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_run_flags(parser: argparse.ArgumentParser, what: str, length: str) -> argparse._ArgumentGroup:
    """The run-directory flags of `ddgan train` / `ddgan train-ddpm`; returns the group for recipe overrides.

    `what` names the exported model, `length` what a run without --max-steps trains.
    """
    parser.add_argument("--data", help="training data: .npz, image folder, CIFAR-10 batches or NVAE LMDB")
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, samples, logs, model/)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint that loads (--data optional)",
    )
    parser.add_argument(
        "--resume-from",
        metavar="STEP|PATH",
        help="continue from a checkpoint: a step of the run (e.g. 1200) or a checkpoint directory (implies --resume)",
    )
    parser.add_argument("--export", type=Path, metavar="DIR", help=f"where the EMA {what} goes (default OUT/model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_common_flags(parser)
    loop = parser.add_argument_group("how the run is driven (a --resume may change these)")
    loop.add_argument("--max-steps", type=positive_int, help=f"train this many steps in all (default: {length})")
    loop.add_argument("--time-limit", type=float, metavar="MINUTES", help="checkpoint, export and stop after this long")
    loop.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS", help="steps between checkpoints")
    loop.add_argument("--checkpoint-minutes", type=float, help="also checkpoint after this long (0: off)")
    loop.add_argument("--keep-checkpoints", type=positive_int, help="newest checkpoints kept")
    loop.add_argument("--sample-every", type=int, metavar="STEPS", help="steps between sample grids (0: at the end)")
    loop.add_argument("--sample-count", type=positive_int, help="images per sample grid")
    loop.add_argument("--log-every", type=positive_int, metavar="STEPS", help="steps between TensorBoard points")
    loop.add_argument("--num-workers", type=int, help="DataLoader workers for on-disk datasets")
    return parser.add_argument_group("recipe overrides (default: the preset's recipe; fixed once a run exists)")


def resuming(args: argparse.Namespace) -> bool:
    """Whether the command continues a run (`--resume`, or `--resume-from`, which implies it)."""
    return bool(args.resume or getattr(args, "resume_from", None))


def loop_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The LoopConfig fields given on the command line."""
    return {field: getattr(args, dest) for dest, field in LOOP_FLAGS.items() if getattr(args, dest) is not None}


def set_threads(threads: int | None) -> None:
    """`threads`, or the CPUs this process may use (affinity mask, cgroup quota; OMP_NUM_THREADS wins)."""
    from ddgan.model.threads import set_threads as set_torch_threads

    set_torch_threads(threads or None)
