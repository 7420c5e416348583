"""Stages `throughput` and `compile`: images/s per preset, batch size and variant, against the FLOP floor.

A cell times, after a first call (graph capture and compilation happen there; its time is kept) and `warmup`
more untimed calls, the median of `repeats` calls of
- the chain on inputs already on the device (`run_chain`, synchronised before and after): device ms;
- `sample_from_noise`, the sampler's own call with the noise copied in and the images copied out, as the server
  runs it: e2e ms.
The floor is FLOPs per image (`count_flops` on the meta device: convolutions, matmuls, attention; GroupNorm,
SiLU and elementwise work not counted) × batch ÷ the device's measured dense bf16 matmul rate
(`matmul_rate`: bf16 8192² on CUDA, fp32 1024² on the CPU); × floor is device ms over floor ms, the same bf16
floor for every variant. Weights are random, with no all-zero parameter (timing on zeros flatters).
`torch.compile` is its own stage because its compilation time is the least predictable part of the run.
"""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddgan.bench.backends import matmul_rate
from ddgan.bench.gpu.common import Plan, StageRecord, describe_error
from ddgan.bench.gpu.correctness import float32_math_state, random_model_dir
from ddgan.bench.sampler import count_flops, time_interleaved
from ddgan.model.config import get_preset
from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.sampler import backend_availability, open_sampler

# WaveDiff's README: CelebA-HQ 256 on one A100, 0.79 s per batch of 100 images (a different, wavelet-based
# generator on another GPU: a published anchor, not a like-for-like comparison).
WAVEDIFF_CELEBAHQ_IMAGES_PER_S = 100 / 0.79


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    dtype: str
    stage: str


VARIANTS = (
    Variant("eager fp32", "torch", "float32", "throughput"),
    Variant("eager bf16", "torch", "bfloat16", "throughput"),
    Variant("cuda-graphs bf16", "cuda-graphs", "bfloat16", "throughput"),
    Variant("torch.compile bf16", "torch-compile", "bfloat16", "compile"),
)
# Written and tested elsewhere, but not run by this script (see each note).
NOT_RUN = (("tensorrt fp16", "tensorrt"), ("onnxruntime fp16", "onnxruntime"))


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_cell(sampler: DDGANSampler, batch: int, plan: Plan, flops_per_image: float, rate: float) -> dict[str, Any]:
    device = sampler.device
    noise = sampler.noise(list(range(batch)))
    on_device = noise.to(device, torch.float32)

    def chain() -> object:
        with torch.inference_mode():
            return sampler.run_chain(*on_device)

    start = time.perf_counter()
    chain()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_call_s = time.perf_counter() - start
    device_s = time_interleaved({"chain": chain}, plan.repeats, plan.warmup, device)["chain"]
    e2e_s = time_interleaved({"e2e": lambda: sampler.sample_from_noise(noise)}, plan.repeats, 1, device)["e2e"]
    floor_ms = flops_per_image * batch / rate * 1e3
    return {
        "device_ms": device_s * 1e3,
        "images_per_s": batch / device_s,
        "e2e_ms": e2e_s * 1e3,
        "e2e_images_per_s": batch / e2e_s,
        "floor_ms": floor_ms,
        "x_floor": device_s * 1e3 / floor_ms,
        "first_call_s": first_call_s,
    }


def measure_variant(
    variant: Variant,
    preset: str,
    batches: tuple[int, ...],
    model_dir: Path,
    plan: Plan,
    record: StageRecord,
    flops_per_image: float,
    rate: float,
) -> bool:
    reason = backend_availability(plan.device).get(variant.backend)
    if plan.smoke and variant.backend == "torch-compile":
        reason = "--cpu-smoke skips it: compiling the chain takes minutes of CPU"
    if reason:
        for batch in batches:
            record.add(preset=preset, variant=variant.name, batch=batch, note=f"not run: {reason}")
        return True
    sampler = open_sampler(model_dir, backend=variant.backend, device=plan.device, dtype=variant.dtype)
    assert isinstance(sampler, DDGANSampler)
    ok = True
    for batch in batches:
        row: dict[str, Any] = {"preset": preset, "variant": variant.name, "batch": batch}
        if record.seconds_left() < 10:
            record.add(**row, note="skipped: stage budget spent")
            ok = False
            continue
        try:
            cell = measure_cell(sampler, batch, plan, flops_per_image, rate)
            if (preset, batch) == ("celebahq", 100):
                cell["vs_wavediff"] = cell["images_per_s"] / WAVEDIFF_CELEBAHQ_IMAGES_PER_S
            record.add(**row, **cell)
        except Exception as exc:  # out of memory, a backend failing at one size: record it, measure the rest
            record.add(**row, note=f"failed: {describe_error(exc)}")
            ok = False
            _release()
    del sampler
    _release()
    return ok


def _summary(record: StageRecord) -> str:
    timed = [row for row in record.rows if "images_per_s" in row]
    if not timed:
        return "nothing timed"
    preset = timed[0]["preset"]
    largest = max(row["batch"] for row in timed if row["preset"] == preset)
    cells = [row for row in timed if row["preset"] == preset and row["batch"] == largest]
    figures = ", ".join(f"{row['variant']} {row['images_per_s']:.1f}" for row in cells)
    best = min(row["x_floor"] for row in cells)
    first = max(row["first_call_s"] for row in timed)
    return f"{preset} batch {largest} images/s: {figures}; best {best:.1f}x the floor; slowest first call {first:.0f} s"


def run(stage: str, plan: Plan, record: StageRecord) -> bool:
    from ddgan.export.backends import register

    register()
    device = torch.device(plan.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        record.set_summary("CUDA is not available")
        return False
    rate, rate_kind = matmul_rate(device)
    record.note(f"floor rate: {rate / 1e12:.3g} TFLOP/s measured ({rate_kind}, random inputs)")
    if device.type == "cuda":
        record.note(
            f"eager fp32 runs with torch's default float32 math, as `ddgan serve` does ({float32_math_state()}; "
            "torch's defaults: TF32 cuDNN convolutions, full-fp32 matmuls)"
        )
    record.note(f"WaveDiff (one A100, CelebA-HQ 256, batch 100): {WAVEDIFF_CELEBAHQ_IMAGES_PER_S:.1f} images/s")
    ok = True
    with tempfile.TemporaryDirectory(prefix=f"ddgan-gpu-{stage}-") as work:
        for preset, sizes in plan.throughput.items():
            # torch.compile compiles for the first size and again, dynamic, for the next: the largest goes first.
            batches = tuple(sorted(sizes, reverse=True)) if stage == "compile" else sizes
            _, flops_per_image = count_flops(get_preset(preset), 1)
            record.note(f"{preset}: {flops_per_image / 1e9:.1f} GFLOP per image for the whole chain")
            model_dir = random_model_dir(preset, Path(work) / preset)
            for variant in (v for v in VARIANTS if v.stage == stage):
                try:
                    ok &= measure_variant(variant, preset, batches, model_dir, plan, record, flops_per_image, rate)
                except Exception as exc:  # the sampler did not even build: the other variants still run
                    record.add(preset=preset, variant=variant.name, batch=None, note=f"failed: {describe_error(exc)}")
                    ok = False
                    _release()
                if variant.backend == "torch-compile":
                    torch.compiler.reset()  # the next preset compiles afresh; free this one's graphs
    if stage == "throughput":
        reasons = backend_availability(plan.device)
        for name, backend in NOT_RUN:
            why = reasons.get(backend) or "needs an exported artefact and an engine build (ddgan bench backends)"
            record.add(preset="all", variant=name, batch=None, note=f"written, not run: {why}")
    record.set_summary(_summary(record))
    return ok
