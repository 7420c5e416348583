"""`ddgan bench BENCHMARK`: each benchmark lives in its own module with `add_parser(sub)` (names in BENCHMARKS)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "sampler": "ddgan.bench.sampler",
    "serve": "ddgan.bench.serve",
    "serve-ray": "ddgan.bench.serve_ray",
    "backends": "ddgan.bench.backends",
    "train-step": "ddgan.bench.train_step",
    "quality": "ddgan.bench.quality",
    "profile": "ddgan.bench.profile_ops",
    "generator-ab": "ddgan.bench.generator_ab",
    "int8": "ddgan.bench.int8",
    "gpu": "ddgan.bench.gpu.validate",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks: sampler, serve, serve-ray, backends, train-step, quality, profile, generator-ab, int8, gpu",
    )
    bench_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for module in BENCHMARKS.values():  # a benchmark imports its optional extras when it runs, not here
        importlib.import_module(module).add_parser(bench_sub)
