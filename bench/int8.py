"""`ddgan bench int8`: ONNX Runtime static int8 (QDQ, calibrated) of the whole chain against its fp32 graph.

The chain's inputs are Gaussian noise (x_T, z and the per-step posterior noise), so calibrating on chain calls
of fresh seeds records the activation ranges of real sampling trajectories: every x_t inside the graph is one the
model produces. Calibration seeds (from 1,000,000) never overlap the seeds the error is measured on (from 0).
Both graphs run in one process with the same threads, their timed calls interleaved; the report gives the
speed ratio and the 8-bit image error against the issue's bound (mean <= 1, max <= 8 grey levels).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

CALIBRATION_SEED = 1_000_000
MEAN_LEVELS_BOUND, MAX_LEVELS_BOUND = 1.0, 8.0
METHODS = ("minmax", "entropy", "percentile")
VECTOR_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"})  # int8/bf16 units


@dataclass(frozen=True)
class Int8Result:
    model: str
    batch: int
    threads: int
    calibration_images: int
    method: str
    op_types: tuple[str, ...]
    excluded_nodes: int
    quantized_nodes: int
    fp32_ms: float
    int8_ms: float
    speedup: float
    mean_levels: float
    p99_levels: float
    max_levels: float
    within_bound: bool


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("int8", help="ONNX Runtime static int8 (calibrated QDQ) vs fp32: speed and image error")
    parser.add_argument("--model", default=None, help="model directory (default: --preset with random weights)")
    parser.add_argument("--preset", default="cifar10", help="with random weights, when --model is not given")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--calibration-batches", type=int, default=8, help="chain calls of 8 images each")
    parser.add_argument("--method", choices=METHODS, default="minmax", help="calibration method")
    parser.add_argument("--op-types", default="Conv,MatMul,Gemm", help="operator types to quantise")
    parser.add_argument(
        "--keep-fp32", type=int, default=0, metavar="N", help="leave the first and last N layers (weights) in fp32"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs it may use)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.set_defaults(handler=run)


def quantize_chain(
    fp32_onnx: Path,
    out: Path,
    config: Any,
    *,
    calibration_batches: int,
    method: str = "minmax",
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm"),
    keep_fp32: int = 0,
) -> tuple[int, tuple[str, ...]]:
    """Write the calibrated int8 QDQ graph of `fp32_onnx` to `out`; (nodes quantised, names of those kept fp32)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ddgan.export.artifacts import INPUT_NAMES

    class ChainNoise(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(calibration_batches))

        def get_next(self) -> dict[str, np.ndarray] | None:
            index = next(self.batches, None)
            if index is None:
                return None
            noise = _noise(config, CALIBRATION_SEED + 8 * index, 8)
            return {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, noise, strict=True)}

    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    # The chain repeats the generator once per step and its T copies of a layer share one weight, which the
    # quantiser quantises for all of them, so what stays fp32 is chosen by layer (weight), in every step.
    graph = onnx.load(str(prepared)).graph
    initializers = {tensor.name for tensor in graph.initializer}
    candidates = [node for node in graph.node if node.op_type in op_types]
    layers: dict[str, list[str]] = {}
    for node in candidates:
        if node.input[1] in initializers:
            layers.setdefault(node.input[1], []).append(node.name)
    order = list(layers)
    kept_layers = set(order[:keep_fp32] + order[len(order) - keep_fp32 :]) if keep_fp32 else set()
    excluded = sorted(name for layer in kept_layers for name in layers[layer])
    quantize_static(
        str(prepared),
        str(out),
        ChainNoise(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(op_types),
        nodes_to_exclude=excluded,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[method],
    )
    prepared.unlink(missing_ok=True)
    return len(candidates) - len(excluded), tuple(excluded)


def _noise(config: Any, first_seed: int, count: int) -> Any:
    from ddgan.model.noise import chain_noise, image_seeds

    return chain_noise(
        image_seeds(first_seed, count), config.image_shape, config.generator.nz, config.diffusion.num_timesteps
    )


def compare(fp32_onnx: Path, int8_onnx: Path, config: Any, batch: int, rounds: int, threads: int) -> dict[str, float]:
    """Interleaved medians of one chain call of each graph, and the 8-bit image error of int8 against fp32."""
    from ddgan.export.artifacts import INPUT_NAMES, OUTPUT_NAME
    from ddgan.export.ort_backend import ort_session
    from ddgan.model.images import to_uint8

    sessions = {name: ort_session(path, threads=threads) for name, path in (("fp32", fp32_onnx), ("int8", int8_onnx))}
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, _noise(config, 0, batch), strict=True)}
    outputs = {name: session.run([OUTPUT_NAME], feeds)[0] for name, session in sessions.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for number in range(rounds):
        for name in list(sessions)[:: 1 if number % 2 == 0 else -1]:
            started = time.perf_counter()
            sessions[name].run([OUTPUT_NAME], feeds)
            times[name].append(time.perf_counter() - started)
    levels = np.abs(
        to_uint8(torch.from_numpy(outputs["int8"])).astype(np.int16)
        - to_uint8(torch.from_numpy(outputs["fp32"])).astype(np.int16)
    ).astype(np.float64)
    return {
        "fp32_ms": statistics.median(times["fp32"]) * 1000,
        "int8_ms": statistics.median(times["int8"]) * 1000,
        "mean_levels": float(levels.mean()),
        "p99_levels": float(np.quantile(levels, 0.99)),
        "max_levels": float(levels.max()),
    }


def run(args: argparse.Namespace) -> int:
    from ddgan.bench.sampler import machine_description
    from ddgan.export.onnx_export import export_onnx
    from ddgan.model.checkpoint import load_config, save_model
    from ddgan.model.config import get_preset
    from ddgan.model.dtypes import cpu_flags
    from ddgan.model.sampler import random_generator
    from ddgan.model.threads import set_threads

    threads = set_threads(args.threads)
    op_types = tuple(name for name in args.op_types.split(",") if name)
    with tempfile.TemporaryDirectory(prefix="ddgan-int8-") as work:
        workdir = Path(work)
        if args.model:
            model_dir, label = Path(args.model), Path(args.model).name
        else:
            model_dir, label = workdir / "model", f"{args.preset} (random)"
            config = get_preset(args.preset)
            save_model(model_dir, config, random_generator(config).state_dict())
        config = load_config(model_dir)
        fp32_onnx = model_dir / "chain.onnx"
        if not fp32_onnx.is_file():
            fp32_onnx = workdir / "chain.onnx"
            logger.info("exporting the fp32 chain of %s", model_dir)
            export_onnx(model_dir, fp32_onnx, max_batch=max(args.batch, 2))
        int8_onnx = workdir / "chain.int8.onnx"
        started = time.perf_counter()
        quantized, kept_names = quantize_chain(
            fp32_onnx,
            int8_onnx,
            config,
            calibration_batches=args.calibration_batches,
            method=args.method,
            op_types=op_types,
            keep_fp32=args.keep_fp32,
        )
        kept = len(kept_names)
        logger.info("quantised %d nodes (%d kept in fp32) in %.0f s", quantized, kept, time.perf_counter() - started)
        figures = compare(fp32_onnx, int8_onnx, config, args.batch, args.rounds, threads)
    result = Int8Result(
        model=label,
        batch=args.batch,
        threads=threads,
        calibration_images=8 * args.calibration_batches,
        method=args.method,
        op_types=op_types,
        excluded_nodes=kept,
        quantized_nodes=quantized,
        speedup=figures["fp32_ms"] / figures["int8_ms"],
        within_bound=figures["mean_levels"] <= MEAN_LEVELS_BOUND and figures["max_levels"] <= MAX_LEVELS_BOUND,
        **figures,
    )
    flags = " ".join(sorted(cpu_flags() & VECTOR_FLAGS)) or "none of " + " ".join(sorted(VECTOR_FLAGS))
    machine = machine_description(torch.device("cpu"))
    print(f"# ddgan bench int8: {label}, batch {args.batch}, {threads} threads; {machine}; flags {flags}")
    print("| calibration | nodes int8 / fp32 | fp32 ms | int8 ms | speed-up | 8-bit error mean / p99 / max | bound |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print(
        f"| {result.method}, {result.calibration_images} images | {quantized} / {kept} | {result.fp32_ms:.0f} | "
        f"{result.int8_ms:.0f} | {result.speedup:.2f}x | {result.mean_levels:.2f} / {result.p99_levels:.0f} / "
        f"{result.max_levels:.0f} | {'within' if result.within_bound else 'exceeded'} |"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0
