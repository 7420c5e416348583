"""`ddgan export onnx` and `ddgan export trt`."""

from __future__ import annotations

import argparse
import logging
import sys

from ddgan.export.artifacts import ArtifactError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the sampling chain: ONNX graph, TensorRT engine")
    sub = parser.add_subparsers(dest="export_format", metavar="FORMAT")

    onnx = sub.add_parser(
        "onnx",
        help="the whole T-step chain as one ONNX graph (dynamic batch), verified against torch",
        description="Export x_T, z (T,B,nz), noise (T,B,C,H,W) -> x_0 as one graph; writes OUTPUT and OUTPUT.json.",
    )
    onnx.add_argument("--model", required=True, help="model directory (config.json + generator.safetensors)")
    onnx.add_argument("-o", "--output", help="ONNX file (default: MODEL/chain.onnx, or MODEL/chain.fp16.onnx)")
    onnx.add_argument(
        "--fp16", action="store_true", help="fp16 generator (norms, z mapping, AdaGN in fp32), fp32 inputs/outputs"
    )
    onnx.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20)")
    onnx.add_argument("--max-batch", type=int, default=64, help="largest batch declared to the exporter (>= 2)")
    onnx.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max |onnxruntime - torch| (1e-4; fp16 0.5, and its 8-bit images: mean <= 1 level, 99%% <= 4)",
    )
    onnx.set_defaults(handler=_export_onnx)

    trt = sub.add_parser(
        "trt",
        help="a TensorRT 10 engine (.plan) from an exported ONNX (needs a CUDA GPU and the `gpu` extra)",
        description="Build a strongly typed engine with one optimisation profile; writes OUTPUT and OUTPUT.json.",
    )
    trt.add_argument("--onnx", required=True, help="ONNX file written by `ddgan export onnx`")
    trt.add_argument("-o", "--output", help="engine file (default: chain.plan / chain.fp16.plan beside the ONNX)")
    trt.add_argument("--min-batch", type=int, default=1)
    trt.add_argument("--opt-batch", type=int, default=16)
    trt.add_argument("--max-batch", type=int, default=64)
    trt.add_argument("--fp16", action="store_true", help="build from an fp16 export (chain.fp16.onnx)")
    trt.add_argument("--workspace-gib", type=float, default=8.0, help="builder workspace limit")
    trt.add_argument("--timing-cache", help="timing cache file (default: trt-timing.cache beside the engine)")
    trt.add_argument("--device-index", type=int, default=0, help="CUDA device to build on")
    trt.set_defaults(handler=_export_trt)
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)


def _export_onnx(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ddgan.export.artifacts import onnx_file_name
    from ddgan.export.onnx_export import DEFAULT_OPSET, ExportError, export_onnx
    from ddgan.model.checkpoint import CheckpointError

    output = args.output or str(Path(args.model) / onnx_file_name("fp16" if args.fp16 else "fp32"))
    try:
        meta = export_onnx(
            args.model,
            output,
            fp16=args.fp16,
            opset=args.opset or DEFAULT_OPSET,
            max_batch=args.max_batch,
            tolerance=args.tolerance,
        )
    except (ExportError, ArtifactError, CheckpointError, FileNotFoundError) as exc:
        logger.error("export onnx failed: %s", exc)
        return 1
    check = meta.verification
    sys.stdout.write(
        f"wrote {output} ({meta.precision}, opset {meta.opset}, T={meta.num_timesteps}, batch 1..{meta.batch_max} "
        f"symbolic)\nmax |onnxruntime - torch fp32| = {check.max_abs_error:.3g} at batch {list(check.batch_sizes)} "
        f"(tolerance {check.tolerance:.1g})\n"
    )
    if check.uint8_mean_levels is not None:
        sys.stdout.write(
            f"8-bit images: |Δ| {check.uint8_mean_levels:.3g} grey levels on average, {check.uint8_p99_levels:.0f} "
            f"at the 99th percentile, {check.uint8_max_levels:.0f} at most\n"
        )
    return 0


def _export_trt(args: argparse.Namespace) -> int:
    from ddgan.export.trt_build import TensorRTUnavailableError, build_engine

    try:
        meta = build_engine(
            args.onnx,
            args.output,
            min_batch=args.min_batch,
            opt_batch=args.opt_batch,
            max_batch=args.max_batch,
            fp16=args.fp16,
            workspace_gib=args.workspace_gib,
            timing_cache=args.timing_cache,
            device_index=args.device_index,
        )
    except TensorRTUnavailableError as exc:
        logger.error("%s", exc)
        return 3
    except (ArtifactError, FileNotFoundError) as exc:
        logger.error("export trt failed: %s", exc)
        return 1
    sys.stdout.write(
        f"wrote {meta.file} for {meta.gpu_name} (compute {meta.compute_capability}), TensorRT "
        f"{meta.tensorrt_version}, {meta.precision}, profile {meta.profile}, build {meta.build_seconds} s\n"
    )
    return 0
