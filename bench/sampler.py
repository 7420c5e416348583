"""`ddgan bench sampler`: DDGAN sampler throughput per preset, with FLOPs and a reference-style comparison.

For each preset (random weights: speed depends on the architecture only) it times, after warm-up,
- the full T-step sampler (`DDGANSampler.sample_from_noise`) on one batch: ms per batch and images/s;
- one generator forward pass, ours and `bench.official_style` on the same weights and inputs, interleaved so
  that both see the same machine load; the speed-up is their ratio of medians.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on the meta device (convolutions, matmuls and
attention; elementwise ops are not counted) and are the same useful-work count for both implementations.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddgan.bench.official_style import OfficialStyleGenerator
from ddgan.model.chain import CastingChain
from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.config import PRESETS, ModelConfig, get_preset
from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.diffusion import SamplingChain
from ddgan.model.dtypes import cpu_flags
from ddgan.model.ncsnpp import NCSNpp
from ddgan.model.noise import image_seeds
from ddgan.model.sampler import open_sampler
from ddgan.model.threads import set_threads

logger = logging.getLogger(__name__)

DEFAULT_PRESETS = "cifar10,mnist"


@dataclass(frozen=True)
class PresetResult:
    preset: str
    steps: int
    batch: int
    gflop_per_image_step: float
    gflop_per_image: float
    chain_ms_per_batch: float
    forward_ms_per_image: float
    reference_ms_per_image: float | None
    reference_max_abs_diff: float | None

    @property
    def images_per_s(self) -> float:
        return self.batch / self.chain_ms_per_batch * 1e3

    @property
    def gflop_per_s(self) -> float:
        return self.gflop_per_image_step / self.forward_ms_per_image * 1e3

    @property
    def speedup(self) -> float | None:
        return None if self.reference_ms_per_image is None else self.reference_ms_per_image / self.forward_ms_per_image


def count_flops(config: ModelConfig, batch: int) -> tuple[float, float]:
    """(FLOPs per image for one generator forward, FLOPs per image for the whole chain), on the meta device."""
    with torch.device("meta"):
        generator = NCSNpp(config.generator).eval()
    chain = SamplingChain(generator, config.diffusion)  # its coefficients are Python floats, built on the CPU
    with torch.device("meta"):
        steps = config.diffusion.num_timesteps
        x = torch.zeros(batch, *config.image_shape)
        z = torch.zeros(steps, batch, config.generator.nz)
        noise = torch.zeros(steps, batch, *config.image_shape)
        t = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        with FlopCounterMode(display=False) as step_counter:
            generator(x, t, z[0])
        with FlopCounterMode(display=False) as chain_counter:
            chain(x, z, noise)
    return step_counter.get_total_flops() / batch, chain_counter.get_total_flops() / batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device, clock: str = "wall"
) -> dict[str, float]:
    """Median seconds per call of each function; calls alternate so all see the same load.

    `clock="cpu"` counts this process's CPU time (all its threads) instead of wall time: on a shared machine it
    leaves out the time the process waited for a core, so single-threaded figures stay comparable.
    """
    now = CLOCKS[clock]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _synchronize(device)
            start = now()
            fn()
            _synchronize(device)
            times[name].append(now() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def bench_preset(
    name: str, batch: int, repeats: int, warmup: int, device: torch.device, reference: bool, clock: str = "wall"
) -> PresetResult:
    config = get_preset(name)
    flops_step, flops_chain = count_flops(config, batch)
    sampler = open_sampler(preset=name, random_weights=True, device=str(device))
    assert isinstance(sampler, DDGANSampler) and isinstance(sampler.run_chain, CastingChain)
    chain = sampler.run_chain.chain  # CastingChain -> SamplingChain -> NCSNpp
    assert isinstance(chain, SamplingChain) and isinstance(chain.generator, NCSNpp)
    generator = chain.generator
    noise = sampler.noise(image_seeds(0, batch))
    steps = config.diffusion.num_timesteps
    x = noise.x_T.to(device)
    t = torch.full((batch,), steps - 1, dtype=torch.long, device=device)
    z = noise.z[0].to(device)

    logger.info(
        "%s: %.2f GFLOP/image/step, timing the %d-step sampler at batch %d", name, flops_step / 1e9, steps, batch
    )
    chain_s = time_interleaved({"chain": lambda: sampler.sample_from_noise(noise)}, repeats, warmup, device, clock)[
        "chain"
    ]

    forwards: dict[str, Callable[[], object]] = {"ours": lambda: generator(x, t, z)}
    max_abs_diff = None
    if reference:
        official_style = OfficialStyleGenerator(generator)
        forwards["reference"] = lambda: official_style(x, t, z)
        max_abs_diff = float((official_style(x, t, z) - generator(x, t, z)).abs().max())
    logger.info("%s: timing one generator forward%s", name, " (ours and official-style)" if reference else "")
    forward_s = time_interleaved(forwards, repeats, warmup, device, clock)
    return PresetResult(
        preset=name,
        steps=steps,
        batch=batch,
        gflop_per_image_step=flops_step / 1e9,
        gflop_per_image=flops_chain / 1e9,
        chain_ms_per_batch=chain_s * 1e3,
        forward_ms_per_image=forward_s["ours"] * 1e3 / batch,
        reference_ms_per_image=forward_s["reference"] * 1e3 / batch if reference else None,
        reference_max_abs_diff=max_abs_diff,
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The flags that decide which CPU kernels run (bf16/int8 matrix units, vector width): named beside every figure.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_speed_flags() -> str:
    present = cpu_flags()
    return " ".join(flag for flag in SPEED_FLAGS if flag in present) or "none of " + " ".join(SPEED_FLAGS)


def machine_description(device: torch.device) -> str:
    cpu = f"CPU {cpu_model()} ({os.cpu_count()} logical cores; flags {cpu_speed_flags()})"
    parts = [cpu, f"torch {torch.__version__}"]
    parts.append(f"{torch.get_num_threads()} intra-op threads")
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average at start {os.getloadavg()[0]:.1f}")
    return ", ".join(parts)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_report(
    results: list[PresetResult], command: str, machine: str, device: torch.device, clock: str = "wall"
) -> str:
    timed = "wall-clock time" if clock == "wall" else "process CPU time (all threads), not wall-clock"
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine}; device {device.type}; float32; random weights; medians of {timed}.",
        "",
        "| preset | T | batch | GFLOP/img/step | GFLOP/img (chain) | sampler ms/batch | images/s "
        "| G forward ms/img | GFLOP/s | official-style ms/img | speed-up | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.preset} | {r.steps} | {r.batch} | {r.gflop_per_image_step:.2f} | {r.gflop_per_image:.2f} "
            f"| {r.chain_ms_per_batch:.0f} | {r.images_per_s:.2f} | {r.forward_ms_per_image:.1f} "
            f"| {r.gflop_per_s:.1f} | {_fmt(r.reference_ms_per_image, '.1f')} | {_fmt(r.speedup, '.2f')}x "
            f"| {_fmt(r.reference_max_abs_diff, '.1e')} |"
        )
    if hasattr(os, "getloadavg"):
        lines += ["", f"Load average at end: {os.getloadavg()[0]:.1f}."]
    return "\n".join(lines) + "\n"


def _parse_presets(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRESETS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    return names


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("ddgan bench sampler: --clock cpu only makes sense with --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ddgan bench sampler: --device cuda but CUDA is not available")
    set_threads(args.threads)
    command = "ddgan " + shlex.join(sys.argv[1:])
    machine = machine_description(device)
    results = []
    for name in args.presets:
        result = bench_preset(
            name, args.batch, args.repeats, args.warmup, device, reference=not args.no_reference, clock=args.clock
        )
        logger.info(
            "%s: %.1f ms/image per forward, %.0f GFLOP/s", name, result.forward_ms_per_image, result.gflop_per_s
        )
        results.append(result)
    report = markdown_report(results, command, machine, device, args.clock)
    sys.stdout.write(report)
    if args.out is not None:
        try:
            atomic_write_bytes(Path(args.out), report.encode())
        except OSError as exc:  # the table is already on stdout: say why the file is missing, lose nothing
            raise SystemExit(f"ddgan bench sampler: cannot write {args.out}: {exc}") from exc
        logger.info("wrote %s", args.out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sampler",
        help="sampler images/s and generator GFLOP/s per preset (random weights), vs an official-style forward",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--presets",
        type=_parse_presets,
        default=_parse_presets(DEFAULT_PRESETS),
        help=f"comma-separated presets (default {DEFAULT_PRESETS}; all: {','.join(PRESETS)})",
    )
    parser.add_argument("--batch", type=_at_least(1), default=16, help="images per batch (default 16)")
    parser.add_argument("--repeats", type=_at_least(1), default=3, help="timed repeats; the median is reported")
    parser.add_argument(
        "--warmup", type=_at_least(0), default=1, help="untimed warm-up calls before timing (default 1)"
    )
    parser.add_argument(
        "--threads", type=_at_least(1), default=None, help="torch threads (default: the CPUs it may use)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, for a machine shared with other jobs",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the official-style comparison")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.set_defaults(handler=run)
    return parser
