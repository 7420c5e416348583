"""Run directories of `ddgan train` and `ddgan train-ddpm`: new or resumed, the recipe fixed, then the shared loop.

A run directory holds `train_config.json` (the resolved recipe), `run.json` (data path, processes, device, the
commands that started and resumed it), `checkpoints/`, `samples/`, `tensorboard/` and `model/`. `--resume`
reads the recipe and the data path back, so neither needs repeating; of the recipe it may change only what
drives the loop (`LoopConfig.resumable_fields`). Every check runs before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.config import ConfigError
from ddgan.training.flags import resuming
from ddgan.training.train_config import LoopConfig

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
CONFIG_FILE = "train_config.json"

ConfigT = TypeVar("ConfigT", bound=LoopConfig)


def open_run(
    command: str,
    args: argparse.Namespace,
    config_class: type[ConfigT],
    new_config: Callable[[], ConfigT],
    changes: Callable[[ConfigT], Mapping[str, Any]],
    new_run_flags: tuple[str, ...],
) -> tuple[ConfigT, str]:
    """(config, data path) of the run in `args.out`: resumed from its files, or `new_config()` for a new one.

    `changes(base)` are the fields the flags set, relative to `base`; a resumed run refuses those that differ
    from its recipe and are not resumable. `new_run_flags` name what a new run needs (they map to args dests).
    """
    out: Path = args.out
    config_file = out / CONFIG_FILE
    resume = resuming(args)
    try:
        if resume and config_file.is_file():
            saved = config_class.from_json(config_file.read_text())
            wanted = changes(saved)
            allowed = config_class.resumable_fields()
            fixed = sorted(k for k, v in wanted.items() if k not in allowed and v != getattr(saved, k))
            if fixed:
                raise SystemExit(
                    f"ddgan {command} --resume: the run's recipe is fixed ({config_file}); only "
                    f"{', '.join(sorted(allowed))} may change (got {', '.join(fixed)})"
                )
            data = args.data or _run_info(out).get("data")
            if not data:
                raise SystemExit(
                    f"ddgan {command} --resume: {out / RUN_FILE} does not say where the data is; pass --data"
                )
            return saved.replace(**{k: v for k, v in wanted.items() if k in allowed}), str(data)
        if any(not getattr(args, flag.removeprefix("--").replace("-", "_")) for flag in new_run_flags):
            nothing_to_resume = f"{out} holds no run to resume; " if resume else ""
            raise SystemExit(f"ddgan {command}: {nothing_to_resume}a new run needs {' and '.join(new_run_flags)}")
        if (out / "checkpoints").exists():
            raise SystemExit(f"ddgan {command}: {out} already holds a run; pass --resume or choose another --out")
        base = new_config()
        return base.replace(**changes(base)), str(args.data)
    except ConfigError as exc:
        raise SystemExit(f"ddgan {command}: {exc}") from exc


def _run_info(out: Path) -> dict[str, Any]:
    path = out / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_data(out: Path) -> str:
    """The data path a run was trained on, as run.json records it ("?" when it does not)."""
    return str(_run_info(out).get("data", "?"))


def _write_run_files(args: argparse.Namespace, config: LoopConfig, data: str, images: int, ctx: Any) -> None:
    import torch

    out: Path = args.out
    atomic_write_bytes(out / CONFIG_FILE, (config.to_json() + "\n").encode())
    previous = _run_info(out) if resuming(args) else {}
    info = {
        **previous,
        "data": str(Path(data).resolve()),
        "images": images,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "torch": torch.__version__,
    }
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if previous:
        info["resumed"] = [*previous.get("resumed", []), {"at": now, "command": " ".join(sys.argv)}]
    else:
        info.update(command=" ".join(sys.argv), started=now)
    atomic_write_bytes(out / RUN_FILE, (json.dumps(info, indent=2) + "\n").encode())


def train_run(
    command: str,
    args: argparse.Namespace,
    config: LoopConfig,
    data: str,
    dataset: Any,
    build: Callable[[Any], Any],
    trained_on: str,
    planned_limit: str | None = None,
) -> int:
    """Build the trainer (`build(ctx)`), resume it, and run the shared loop; the process's exit code.

    A resumed run that is already at its end says so, and which flag extends it (`planned_limit` names the
    trainer's own length, e.g. "--epochs (now 10)"), and changes nothing.
    """
    from ddgan.training.distributed import init_distributed, shutdown_distributed
    from ddgan.training.flags import set_threads
    from ddgan.training.loop import SIGNAL_EXIT_CODES
    from ddgan.training.run_state import RunStateError, clean_staging, resolve_checkpoint

    set_threads(config.num_threads)
    ctx = init_distributed(args.device)
    try:
        if ctx.is_main:
            for path in clean_staging(args.out):
                logger.warning("removed %s, left by an interrupted checkpoint write", path)
        trainer = build(ctx)
        try:
            if args.resume_from is not None:
                trainer.resume(resolve_checkpoint(args.out, args.resume_from))
            elif args.resume and not trainer.resume():
                logger.info("no checkpoint in %s yet: starting a new run", args.out)
        except RunStateError as exc:
            raise SystemExit(f"ddgan {command} --resume: {exc}") from None
        if trainer.finished:
            limits = []
            if config.max_steps is not None and trainer.step >= config.max_steps:
                limits.append(f"--max-steps (now {config.max_steps})")
            planned = trainer.planned_steps()
            if planned_limit and planned is not None and trainer.step >= planned:
                limits.append(planned_limit)
            if ctx.is_main:
                sys.stderr.write(
                    f"ddgan {command}: the run in {args.out} is finished (step {trainer.step} of "
                    f"{trainer.total_steps}); to train longer, resume with a larger {' and '.join(limits)}\n"
                )
            return 0
        if ctx.is_main:
            _write_run_files(args, config, data, len(dataset), ctx)
        logger.info(
            "%s (%d images): steps %d..%d of %d x %d images",
            trained_on, len(dataset), trainer.step, trainer.total_steps, trainer.stream.batch_size, ctx.world_size,
        )  # fmt: skip
        reason = trainer.fit(trained_on, export_dir=args.export, progress=not args.no_progress)
    finally:
        shutdown_distributed()
    return SIGNAL_EXIT_CODES.get(reason, 0)
