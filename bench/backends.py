"""`ddgan bench backends`: every available backend side by side on one model, in one run.

For each backend variant and batch size: median ms per batch and images/s of `sample_from_noise` (noise drawn
once, outside the timing; host->device copies and the copy of the images back are inside, as in serving),
the speed ratio to torch eager fp32 measured in the same run, the max |image - torch eager| on the same noise,
and the FLOP floor: FLOPs per image (torch.utils.flop_counter on the meta device) x batch / the measured dense
matmul rate of the device (bf16 on CUDA, fp32 on the CPU). ONNX files and engines are exported into a work
directory when the model directory has no fresh ones; the model directory itself is never modified.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddgan.model.threads import set_threads

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    backend: str
    dtype: str
    cuda_only: bool = False
    options: tuple[tuple[str, Any], ...] = ()


VARIANTS: dict[str, Variant] = {
    "torch": Variant("torch", "float32"),
    "torch-bf16": Variant("torch", "bfloat16"),
    "torch-cudagraphs": Variant("cuda-graphs", "float32", True),
    "torch-bf16-cudagraphs": Variant("cuda-graphs", "bfloat16", True),
    "torch-compile": Variant("torch-compile", "float32"),
    "torch-compile-bf16": Variant("torch-compile", "bfloat16"),
    "onnxruntime": Variant("onnxruntime", "float32"),
    "onnxruntime-fp16": Variant("onnxruntime", "float16"),
    "openvino": Variant("openvino", "float32"),
    "openvino-bf16": Variant("openvino", "bfloat16"),
    "tensorrt": Variant("tensorrt", "float32", True),
    "tensorrt-fp16": Variant("tensorrt", "float16", True),
}
CPU_DEFAULT = ("torch", "torch-bf16", "torch-compile", "onnxruntime", "openvino")
EXPORTED = ("onnxruntime", "openvino", "tensorrt")  # backends that run an exported artefact


@dataclass
class Row:
    model: str
    variant: str
    batch: int
    ms_per_batch: float | None
    images_per_s: float | None
    vs_torch: float | None
    max_abs_diff: float | None
    uint8_mean_err: float | None  # mean |PNG pixel - torch fp32's| in 1/255 units, on the same noise
    uint8_max_err: float | None
    floor_ms: float | None
    note: str = ""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("backends", help="torch / torch.compile / onnxruntime / TensorRT side by side")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model directory")
    source.add_argument("--preset", help="preset name (use with --random-weights)")
    parser.add_argument("--random-weights", action="store_true", help="untrained weights (speed only)")
    parser.add_argument("--batch", default="1,16,64", help="comma-separated batch sizes")
    parser.add_argument("--backends", help=f"comma-separated variants of {list(VARIANTS)} (default: all available)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per cell (compilation happens here)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and onnxruntime threads (default: the CPUs this process may use)",
    )
    parser.add_argument("--workdir", help="where exported artifacts go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.set_defaults(handler=run)


def flops_per_image(config: Any) -> float:
    """FLOPs of one image through the whole chain (T generator calls), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from ddgan.model.diffusion import SamplingChain
    from ddgan.model.ncsnpp import NCSNpp

    with torch.device("meta"):
        generator = NCSNpp(config.generator)
    chain = SamplingChain(generator, config.diffusion)  # the schedule's floats are computed on the CPU
    with torch.device("meta"):
        c, h, w = config.image_shape
        steps, nz = config.diffusion.num_timesteps, config.generator.nz
        inputs = (torch.randn(1, c, h, w), torch.randn(steps, 1, nz), torch.randn(steps, 1, c, h, w))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        chain(*inputs)
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul FLOP/s: bf16 8192² on CUDA, fp32 1024² on the CPU."""
    dtype, n, reps = (torch.bfloat16, 8192, 20) if device.type == "cuda" else (torch.float32, 1024, 10)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start), f"{str(dtype).removeprefix('torch.')} {n}x{n} matmul"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(call: Callable[[], Any], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _work_model(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The model directory to benchmark (random weights are saved into the work directory)."""
    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import get_preset
    from ddgan.model.sampler import random_generator

    if args.model:
        return Path(args.model), Path(args.model).name
    if not args.random_weights:
        raise SystemExit("--preset needs --random-weights (or give --model DIR)")
    config = get_preset(args.preset)
    directory = workdir / f"{args.preset}-random"
    if not (directory / "generator.safetensors").is_file():
        save_model(directory, config, random_generator(config).state_dict())
    return directory, f"{args.preset} (random)"


def _loadable_dir(model_dir: Path, workdir: Path, variant: Variant, device: torch.device, max_batch: int) -> Path:
    """`model_dir` if its artifact for `variant` loads; else a work copy with a fresh export."""
    from ddgan.export.onnx_export import export_onnx
    from ddgan.model.sampler import SamplerError, open_sampler

    precision = "fp16" if variant.dtype == "float16" else "fp32"
    try:
        open_sampler(model_dir, backend=variant.backend, device=str(device), dtype=variant.dtype)
        return model_dir
    except SamplerError as exc:
        logger.info("%s: %s; exporting into the work directory", variant.backend, exc)
    copy = model_dir if model_dir.is_relative_to(workdir) else workdir / f"{model_dir.name}-artifacts"
    if copy != model_dir and not (copy / "generator.safetensors").is_file():
        copy.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "generator.safetensors"):
            shutil.copy(model_dir / name, copy / name)
    onnx_name = "chain.fp16.onnx" if precision == "fp16" else "chain.onnx"
    if not (copy / onnx_name).is_file():
        export_onnx(copy, copy / onnx_name, fp16=precision == "fp16", max_batch=max(max_batch, 2))
    plan = copy / ("chain.fp16.plan" if precision == "fp16" else "chain.plan")
    if variant.backend == "tensorrt" and not plan.is_file():
        from ddgan.export.trt_build import build_engine

        opt = min(16, max_batch)
        build_engine(copy / onnx_name, min_batch=1, opt_batch=opt, max_batch=max_batch, fp16=precision == "fp16")
    return copy


def run(args: argparse.Namespace) -> int:
    from ddgan.model.checkpoint import load_config
    from ddgan.model.ddgan_sampler import DDGANSampler
    from ddgan.model.images import to_uint8
    from ddgan.model.sampler import backend_availability, open_sampler

    device = torch.device(args.device)
    batches = [int(b) for b in args.batch.split(",")]
    threads = set_threads(args.threads)
    names = args.backends.split(",") if args.backends else list(VARIANTS if device.type == "cuda" else CPU_DEFAULT)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ddgan-bench-"))
    model_dir, label = _work_model(args, workdir)
    config = load_config(model_dir)
    reasons = backend_availability(device)
    flops = flops_per_image(config)
    rate, rate_kind = matmul_rate(device)
    sys.stdout.write(
        f"# {label} on {_device_name(device)}: {flops / 1e9:.2f} GFLOP/image (T={config.diffusion.num_timesteps}); "
        f"measured {rate_kind}: {rate / 1e12:.2f} TFLOP/s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    rows: list[Row] = []
    baseline: dict[int, tuple[float, torch.Tensor]] = {}
    for name in names:
        variant = VARIANTS[name]
        reason = reasons.get(variant.backend)
        if variant.cuda_only and device.type != "cuda":
            reason = "needs a CUDA device"
        if reason:
            rows += [
                Row(label, name, b, None, None, None, None, None, None, None, f"not run: {reason}") for b in batches
            ]
            continue
        try:
            directory = model_dir
            if variant.backend in EXPORTED:
                directory = _loadable_dir(model_dir, workdir, variant, device, max(batches))
            options = dict(variant.options)
            if variant.backend in ("onnxruntime", "openvino"):
                options["threads"] = threads
            sampler = open_sampler(
                directory, backend=variant.backend, device=str(device), dtype=variant.dtype, options=options
            )
            assert isinstance(sampler, DDGANSampler)
        except Exception as exc:  # report the failure in the table, keep benchmarking the others
            logger.exception("variant %s failed to load", name)
            rows += [Row(label, name, b, None, None, None, None, None, None, None, f"failed: {exc}") for b in batches]
            continue
        for batch in batches:
            noise = sampler.noise(list(range(batch)))
            images = sampler.sample_from_noise(noise)
            seconds = _time(functools.partial(sampler.sample_from_noise, noise), args.warmup, args.repeats)
            if name == "torch":
                baseline[batch] = (seconds, images)
            base = baseline.get(batch)
            pixel_err = np.abs(to_uint8(images).astype(int) - to_uint8(base[1]).astype(int)) if base else None
            rows.append(
                Row(
                    model=label,
                    variant=name,
                    batch=batch,
                    ms_per_batch=seconds * 1e3,
                    images_per_s=batch / seconds,
                    vs_torch=base[0] / seconds if base else None,
                    max_abs_diff=float((images - base[1]).abs().max()) if base else None,
                    uint8_mean_err=float(pixel_err.mean()) if pixel_err is not None else None,
                    uint8_max_err=float(pixel_err.max()) if pixel_err is not None else None,
                    floor_ms=flops * batch / rate * 1e3,
                )
            )
            logger.info("%s batch %d: %.1f ms", name, batch, seconds * 1e3)
    sys.stdout.write(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def format_table(rows: list[Row]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    lines = [
        "| model | backend | batch | ms/batch | images/s | × torch eager | max abs diff vs torch "
        "| 8-bit error mean / max (1/255) | FLOP floor ms | × floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.ms_per_batch is None:
            lines.append(f"| {r.model} | {r.variant} | {r.batch} | {r.note} | | | | | | |")
            continue
        over = r.ms_per_batch / r.floor_ms if r.floor_ms else None
        lines.append(
            f"| {r.model} | {r.variant} | {r.batch} | {num(r.ms_per_batch, '.1f')} | {num(r.images_per_s, '.1f')} "
            f"| {num(r.vs_torch, '.2f')} | {num(r.max_abs_diff, '.1e')} "
            f"| {num(r.uint8_mean_err, '.3f')} / {num(r.uint8_max_err, '.0f')} | {num(r.floor_ms, '.2f')} "
            f"| {num(over, '.0f')} |"
        )
    return "\n".join(lines) + "\n"
