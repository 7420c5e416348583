"""The work behind `ddgan sample` and `ddgan convert` (their parsers are in `ddgan.model.cli`).

Errors a user can fix (a missing or wrong model directory, a checkpoint that does not fit, a bad option) end
with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ddgan.model.checkpoint import CONFIG_FILE, CheckpointError, atomic_write_bytes, convert_official, load_config
from ddgan.model.config import PRESETS, ConfigError, ModelConfig, from_official_args, get_preset
from ddgan.model.images import encode_png, make_grid, to_uint8
from ddgan.model.noise import image_seeds, random_seed
from ddgan.model.official_args import OfficialArgsError, parse_assignments
from ddgan.model.sampler import Sampler, SamplerError, StepsError, open_sampler
from ddgan.model.threads import set_threads

EXIT_USAGE = 2
RANDOM_PREFIX = "random-weights-"
RANDOM_WARNING = (
    "RANDOM WEIGHTS: these images come from an untrained network and show noise, not {dataset}. "
    "--random-weights exists for speed work only."
)


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit code 2."""


def _fail(command: str, message: object) -> int:
    sys.stderr.write(f"ddgan {command}: error: {message}\n")
    return EXIT_USAGE


# ----------------------------------------------------------------------------------------------------------
# ddgan sample


def run_sample(args: argparse.Namespace) -> int:
    try:
        return _sample(args)
    except (UsageError, SamplerError) as exc:
        return _fail("sample", exc)


def _sample(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise UsageError(f"-n must be >= 1, got {args.num_images}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.micro_batch is not None and args.micro_batch < 1:
        raise UsageError(f"--micro-batch must be >= 1, got {args.micro_batch}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"output {args.out} exists and is not a directory")
    seed = random_seed() if args.seed is None else args.seed
    try:
        seeds = image_seeds(seed, args.num_images)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    set_threads(args.threads)
    sampler = _build_sampler(args)
    info = sampler.info
    try:
        steps = info.check_steps(args.steps)
    except StepsError as exc:
        raise UsageError(f"--steps: {exc}") from None
    dataset = info.dataset or "anything"
    if info.random_weights:
        sys.stdout.write(f"WARNING: {RANDOM_WARNING.format(dataset=dataset)}\n")

    started = time.perf_counter()
    images = _generate(sampler, seeds, args.batch_size, steps)
    elapsed = time.perf_counter() - started

    _write_images(args.out, seeds, images, info.random_weights, dataset)
    prefix = RANDOM_PREFIX if info.random_weights else ""
    sys.stdout.write(
        f"wrote {len(seeds)} images (seeds {seeds[0]}..{seeds[-1]}) and {prefix}grid.png to {args.out}: "
        f"{info.kind}, {steps} steps, backend {info.backend}, device {info.device}, dtype {info.dtype}, "
        f"{elapsed:.2f} s ({len(seeds) / elapsed:.2f} images/s)\n"
    )
    return 0


def _build_sampler(args: argparse.Namespace) -> Sampler:
    if args.preset is not None and not args.random_weights:
        raise UsageError(
            "--preset only picks an architecture and needs --random-weights (speed work); "
            "to sample a trained model use --model DIR (ddgan convert makes one from an official checkpoint)"
        )
    if args.model is not None and args.random_weights:
        raise UsageError("--random-weights goes with --preset, not --model")
    if args.model is not None and args.model.exists() and not args.model.is_dir():
        raise UsageError(f"--model must be a model directory, got the file {args.model}")
    return open_sampler(
        args.model,
        preset=args.preset,
        kind=args.sampler if args.preset is not None else None,
        dataset=PRESETS[args.preset].dataset if args.preset in PRESETS else None,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        micro_batch=args.micro_batch,
        random_weights=args.random_weights,
    )


def _generate(sampler: Sampler, seeds: list[int], batch_size: int, steps: int) -> Tensor:
    """Images for `seeds`, batch by batch, with a progress bar (denoising steps of the batch as its postfix)."""
    outputs = []
    with tqdm(total=len(seeds), unit="img", desc=sampler.info.kind, disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.set_postfix_str(f"step {done}/{total}")

        for start in range(0, len(seeds), batch_size):
            batch = seeds[start : start + batch_size]
            outputs.append(sampler.sample(batch, steps=steps, progress=progress))
            bar.update(len(batch))
    return torch.cat(outputs)


def _write_images(out: Path, seeds: list[int], images: Tensor, random_weights: bool, dataset: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    prefix = RANDOM_PREFIX if random_weights else ""
    for seed, image in zip(seeds, pixels, strict=True):
        atomic_write_bytes(out / f"{prefix}{seed}.png", encode_png(image))
    atomic_write_bytes(out / f"{prefix}grid.png", encode_png(make_grid(pixels)))
    if random_weights:
        atomic_write_bytes(out / "README.txt", (RANDOM_WARNING.format(dataset=dataset) + "\n").encode())


# ----------------------------------------------------------------------------------------------------------
# ddgan convert


def run_convert(args: argparse.Namespace) -> int:
    try:
        return _convert(args)
    except (UsageError, CheckpointError, ConfigError, ValueError) as exc:
        return _fail("convert", exc)


def _convert(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        raise UsageError(f"checkpoint not found: {args.checkpoint}")
    if (args.out / CONFIG_FILE).exists() and not args.force:
        raise UsageError(f"{args.out} already holds a model; pass --force to overwrite it")
    config = _convert_config(args)
    if args.dataset is not None:
        config = config.replace(dataset=args.dataset)
    out = convert_official(args.checkpoint, config, args.out)
    converted = load_config(out)
    g = converted.generator
    sys.stdout.write(
        f"converted {args.checkpoint} -> {out} (preset {converted.preset}, {g.image_size}x{g.image_size}, "
        f"T={converted.diffusion.num_timesteps}); try: ddgan sample --model {out} -n 16 --seed 0 -o out/\n"
    )
    return 0


def _convert_config(args: argparse.Namespace) -> ModelConfig:
    if args.preset is not None:
        return get_preset(args.preset)
    if args.official_args is not None:
        try:
            values: dict[str, Any] = parse_assignments(args.official_args)
        except OfficialArgsError as exc:
            raise UsageError(str(exc)) from None
    else:
        try:
            values = json.loads(args.official_args_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read {args.official_args_file} as JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise UsageError(f"{args.official_args_file} must hold a JSON object of option names to values")
    return from_official_args(values, preset=args.name or "custom")
