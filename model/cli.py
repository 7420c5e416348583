"""The parsers of `ddgan sample` and `ddgan convert` (light: `ddgan --help` imports no torch).

The commands themselves are in `ddgan.model.commands`, imported when one runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ddgan.model.config import DTYPE_NAMES, PRESETS


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
    sample.add_argument(
        "--dtype",
        choices=(*DTYPE_NAMES, "auto"),
        default="float32",
        help="network dtype; auto: bfloat16 on CUDA GPUs that support it and on CPUs with AMX, else float32",
    )
    sample.add_argument(
        "--backend", default="torch", help="torch (default), torch-compile, cuda-graphs, onnxruntime, tensorrt ..."
    )
    sample.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the CPUs this process may use)"
    )
    sample.add_argument("--steps", type=int, default=None, help="DDPM only: denoising steps (default: the model's)")
    sample.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        metavar="N",
        help="run every forward pass on exactly N images (padding only the last): each image is then "
        "bit-identical whatever -n and the rest of its batch; without it, identical up to float rounding",
    )
    sample.set_defaults(handler=_run_sample)

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
    convert.set_defaults(handler=_run_convert)


def _run_sample(args: argparse.Namespace) -> int:
    from ddgan.model.commands import run_sample

    return run_sample(args)


def _run_convert(args: argparse.Namespace) -> int:
    from ddgan.model.commands import run_convert

    return run_convert(args)
