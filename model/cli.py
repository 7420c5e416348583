"""`ddgan sample` and `ddgan convert`.

Errors a user can fix (a missing or wrong model directory, a checkpoint that does not fit, a bad option) end
with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
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

EXIT_USAGE = 2
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RANDOM_PREFIX = "random-weights-"
RANDOM_WARNING = (
    "RANDOM WEIGHTS: these images come from an untrained network and show noise, not {dataset}. "
    "--random-weights exists for speed work only."
)


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit code 2."""


def register(subparsers: Any) -> None:
    sample = subparsers.add_parser(
        "sample",
        help="generate images from a model directory",
        description="Generate n images (seeds seed..seed+n-1) as PNGs plus grid.png.",
    )
    source = sample.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model directory: DDGAN (config.json) or DDPM (diffusers)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="architecture preset (needs --random-weights)")
    sample.add_argument("--random-weights", action="store_true", help="untrained weights: for speed work only")
    sample.add_argument(
        "--sampler", choices=("ddgan", "ddpm"), default="ddgan", help="with --preset: DDGAN or the DDPM baseline"
    )
    sample.add_argument("-n", "--num-images", type=int, default=16, help="number of images (default 16)")
    sample.add_argument("--seed", type=int, default=None, help="first seed (default: random, printed)")
    sample.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    sample.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    sample.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    sample.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="network dtype")
    sample.add_argument("--backend", default="torch", help="torch (default) or an export backend (see ddgan export)")
    sample.add_argument("--steps", type=int, default=None, help="DDPM only: denoising steps (default: the model's)")
    sample.add_argument(
        "--fixed-batch",
        type=int,
        default=None,
        metavar="N",
        help="run every forward pass on exactly N images (padding the last batch): each image is then "
        "bit-identical whatever -n and the rest of its batch; without it, identical up to float rounding",
    )
    sample.set_defaults(handler=run_sample)

    convert = subparsers.add_parser(
        "convert",
        help="convert an official netG_*.pth into a model directory",
        description="Convert an official DDGAN generator checkpoint (netG_*.pth) into config.json + safetensors.",
    )
    convert.add_argument("checkpoint", type=Path, help="official netG_*.pth (loaded with weights_only=True)")
    arch = convert.add_mutually_exclusive_group(required=True)
    arch.add_argument("--preset", choices=sorted(PRESETS), help="architecture of the checkpoint")
    arch.add_argument("--official-args", nargs="+", metavar="KEY=VALUE", help="official train_ddgan.py options")
    arch.add_argument("--official-args-file", type=Path, help="JSON object of official train_ddgan.py options")
    convert.add_argument("-o", "--out", type=Path, required=True, help="output model directory")
    convert.add_argument("--name", default=None, help="preset name recorded for custom architectures")
    convert.add_argument("--dataset", default=None, help="dataset name recorded in config.json")
    convert.add_argument("--force", action="store_true", help="overwrite an existing model directory")
    convert.set_defaults(handler=run_convert)


def _fail(command: str, message: object) -> int:
    sys.stderr.write(f"ddgan {command}: error: {message}\n")
    return EXIT_USAGE


# ----------------------------------------------------------------------------------------------------------
# ddgan sample


def run_sample(args: argparse.Namespace) -> int:
    try:
        return _sample(args)
    except (UsageError, CheckpointError, ConfigError, ValueError) as exc:
        return _fail("sample", exc)


def _sample(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise UsageError(f"-n must be >= 1, got {args.num_images}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"output {args.out} exists and is not a directory")
    seed = random_seed() if args.seed is None else args.seed
    seeds = image_seeds(seed, args.num_images)
    if args.fixed_batch is not None and args.fixed_batch < 1:
        raise UsageError(f"--fixed-batch must be >= 1, got {args.fixed_batch}")
    sampler = _build_sampler(args)
    if args.fixed_batch is not None:
        sampler.fixed_batch = args.fixed_batch
    if args.steps is not None and sampler.kind != "ddpm":
        raise UsageError(f"--steps applies to DDPM models only; this DDGAN model always runs {sampler.steps} steps")
    steps = sampler.steps if args.steps is None else args.steps
    dataset = getattr(sampler.config, "dataset", "") or "anything"
    if sampler.random_weights:
        sys.stdout.write(f"WARNING: {RANDOM_WARNING.format(dataset=dataset)}\n")

    started = time.perf_counter()
    images = _generate(sampler, seeds, args.batch_size, steps)
    elapsed = time.perf_counter() - started

    _write_images(args.out, seeds, images, sampler.random_weights, dataset)
    prefix = RANDOM_PREFIX if sampler.random_weights else ""
    sys.stdout.write(
        f"wrote {len(seeds)} images (seeds {seeds[0]}..{seeds[-1]}) and {prefix}grid.png to {args.out}: "
        f"{sampler.kind}, {steps} steps, backend {sampler.backend}, device {sampler.device}, "
        f"{elapsed:.2f} s ({len(seeds) / elapsed:.2f} images/s)\n"
    )
    return 0


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"invalid --device {device!r}: {exc}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")


def _build_sampler(args: argparse.Namespace) -> Any:
    _check_device(args.device)
    dtype = DTYPES[args.dtype]
    if args.preset is not None:
        if not args.random_weights:
            raise UsageError(
                "--preset only picks an architecture and needs --random-weights (speed work); "
                "to sample a trained model use --model DIR (ddgan convert makes one from an official checkpoint)"
            )
        if args.backend != "torch":
            raise UsageError("--random-weights runs on the torch backend only")
        return _random_sampler(args.preset, args.sampler, args.device, dtype)
    if args.random_weights:
        raise UsageError("--random-weights goes with --preset, not --model")
    model_dir: Path = args.model
    if not model_dir.exists():
        raise UsageError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise UsageError(f"--model must be a model directory, got the file {model_dir}")

    from ddgan.model.ddpm import is_ddpm_directory, load_ddpm_sampler

    if is_ddpm_directory(model_dir):
        if args.backend != "torch":
            raise UsageError(f"{model_dir} is a DDPM baseline, which runs on the torch backend only")
        return load_ddpm_sampler(model_dir, device=args.device, dtype=dtype)
    if not (model_dir / CONFIG_FILE).is_file():
        raise UsageError(
            f"{model_dir} is not a model directory: expected a DDGAN model ({CONFIG_FILE} + generator.safetensors, "
            "see ddgan convert) or a diffusers DDPM (unet/ + scheduler/)"
        )
    load_config(model_dir)  # a clear error for a foreign config.json before any backend work
    if args.backend == "torch":
        from ddgan.model.sampler import load_ddgan_sampler

        return load_ddgan_sampler(model_dir, device=args.device, dtype=dtype)
    return _backend_sampler(model_dir, args.backend, args.device, dtype)


def _random_sampler(preset: str, kind: str, device: str, dtype: torch.dtype) -> Any:
    config = get_preset(preset)
    if kind == "ddpm":
        from ddgan.model.ddpm import UNET_ARCHITECTURES, random_weights_ddpm

        if preset not in UNET_ARCHITECTURES:
            raise UsageError(f"no DDPM architecture for preset {preset!r}; choose one of {sorted(UNET_ARCHITECTURES)}")
        channels, size, _ = config.image_shape
        sampler = random_weights_ddpm(preset, num_channels=channels, image_size=size, device=device, dtype=dtype)
        sampler.config = dataclasses.replace(sampler.config, dataset=config.dataset)
        return sampler
    from ddgan.model.sampler import random_weights_sampler

    return random_weights_sampler(config, device=device, dtype=dtype)


def _backend_sampler(model_dir: Path, backend: str, device: str, dtype: torch.dtype) -> Any:
    try:
        backends = importlib.import_module("ddgan.export.backends")
    except ImportError as exc:
        raise UsageError(
            f"--backend {backend} needs the export package (pip install -e '.[export]'), which cannot be "
            f"imported: {exc}"
        ) from exc
    try:
        return backends.load_sampler(model_dir, backend=backend, device=device, dtype=dtype)
    except (CheckpointError, ConfigError, ValueError, ImportError, FileNotFoundError, RuntimeError) as exc:
        raise UsageError(f"backend {backend!r} cannot load {model_dir}: {exc}") from exc


def _generate(sampler: Any, seeds: list[int], batch_size: int, steps: int) -> Tensor:
    """Images for `seeds`, batch by batch, with a progress bar (per denoising step for DDPM)."""
    batches = [seeds[i : i + batch_size] for i in range(0, len(seeds), batch_size)]
    outputs = []
    if sampler.kind == "ddpm":
        with tqdm(total=len(batches) * steps, unit="step", desc="ddpm", disable=None) as bar:
            for batch in batches:
                outputs.append(sampler.sample(batch, steps=steps, progress=lambda done, total: bar.update(1)))
    else:
        with tqdm(total=len(seeds), unit="img", desc=sampler.kind, disable=None) as bar:
            for batch in batches:
                outputs.append(sampler.sample(batch))
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
        values = dict(_parse_assignment(item) for item in args.official_args)
    else:
        try:
            values = json.loads(args.official_args_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"cannot read {args.official_args_file} as JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise UsageError(f"{args.official_args_file} must hold a JSON object of option names to values")
    return from_official_args(values, preset=args.name or "custom")


def _parse_assignment(item: str) -> tuple[str, Any]:
    """`key=value` with JSON values (`nz=100`, `ch_mult=[1,2,2,2]`); `1,2,2` is a list, anything else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--official-args expects KEY=VALUE, got {item!r}")
    key = key.strip().lstrip("-")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return key, [_scalar(part) for part in text.split(",") if part.strip()]
    return key, text


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
