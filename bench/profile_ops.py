"""`ddgan bench profile`: where one chain call spends its time, per op (torch.profiler, CPU activities).

One warm-up call at the requested batch (first-call initialisation; compilation for `--backend torch-compile`),
then one profiled `sample_from_noise` call per dtype; the table is `key_averages()` sorted by self time. Shares
matter, not the absolute times: the profiler's times are wall-clock and include any preemption on a shared
machine. `--kernels` names each of inductor's generated kernels (instead of one line for the compiled graph).
"""

from __future__ import annotations

import argparse
import time

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("profile", help="per-op profile of one chain call (torch.profiler)")
    parser.add_argument("--preset", default="cifar10", help="architecture, random weights (default cifar10)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32,bfloat16", help="comma-separated dtypes (default both)")
    parser.add_argument("--rows", type=int, default=22, help="ops shown per table")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs it may use)")
    parser.add_argument("--backend", default="torch", help="a torch backend: torch (default) or torch-compile")
    parser.add_argument("--kernels", action="store_true", help="torch-compile: one row per generated kernel")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from torch.profiler import ProfilerActivity, profile

    from ddgan.bench.sampler import machine_description
    from ddgan.model.ddgan_sampler import DDGANSampler
    from ddgan.model.sampler import open_sampler
    from ddgan.model.threads import set_threads

    set_threads(args.threads)
    if args.kernels:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    print(
        f"# ddgan bench profile: {args.preset} (random weights), backend {args.backend}, batch {args.batch}; "
        f"{machine_description(torch.device('cpu'))}"
    )
    for dtype in args.dtype.split(","):
        sampler = open_sampler(preset=args.preset, random_weights=True, dtype=dtype, backend=args.backend)
        assert isinstance(sampler, DDGANSampler)
        noise = sampler.noise(list(range(args.batch)))
        sampler.sample_from_noise(noise)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            sampler.sample_from_noise(noise)
            seconds = time.perf_counter() - started
        print(f"\n## {dtype}: profiled call {seconds:.2f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    return 0
