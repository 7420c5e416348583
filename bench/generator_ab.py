"""`ddgan bench generator-ab`: this tree's NCSN++ against another version of `model/ncsnpp.py`, interleaved.

Both generators get the same weights and the same chain noise; each round times one whole T-step chain call of
each (their order alternating), and the medians are compared as a ratio from one process, so drift of a shared
machine hits both alike. The baseline is a file, e.g. `git show caf235e:model/ncsnpp.py > /tmp/ncsnpp_old.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generator-ab", help="this NCSN++ vs another model/ncsnpp.py, interleaved A/B")
    parser.add_argument("baseline", type=Path, help="the other version of model/ncsnpp.py")
    parser.add_argument("--model", default="models/mnist", help="a model directory, or a preset (random weights)")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights and activations")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs it may use)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddgan.bench.sampler import machine_description
    from ddgan.model.chain import CastingChain
    from ddgan.model.checkpoint import load_model
    from ddgan.model.config import get_preset
    from ddgan.model.diffusion import SamplingChain
    from ddgan.model.ncsnpp import NCSNpp
    from ddgan.model.noise import chain_noise
    from ddgan.model.threads import set_threads

    set_threads(args.threads)
    spec = importlib.util.spec_from_file_location("ncsnpp_baseline", args.baseline)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {args.baseline}")
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    if Path(args.model).is_dir():
        config, current = load_model(args.model)
    else:
        config = get_preset(args.model)
        current = NCSNpp(config.generator)
    other = baseline.NCSNpp(config.generator)
    other.load_state_dict(current.state_dict())
    dtype = getattr(torch, args.dtype)
    chains = {
        name: CastingChain(SamplingChain(generator.eval(), config.diffusion), dtype).to(dtype=dtype)
        for name, generator in (("baseline", other), ("this", current))
    }
    machine = machine_description(torch.device("cpu"))
    print(f"# ddgan bench generator-ab: {args.model} vs {args.baseline}, {args.dtype}; {machine}")
    print("| batch | baseline ms/image | this ms/image | this speed / baseline | max abs difference |")
    print("|---:|---:|---:|---:|---:|")
    steps = config.diffusion.num_timesteps
    for size in (int(value) for value in args.batch.split(",")):
        noise = chain_noise(list(range(size)), config.image_shape, config.generator.nz, steps)
        inputs = (noise.x_T, noise.z, noise.noise)
        times: dict[str, list[float]] = {name: [] for name in chains}
        with torch.inference_mode():
            outputs = {name: chain(*inputs) for name, chain in chains.items()}  # first calls: allocation
            for number in range(args.rounds):
                order = list(chains.items()) if number % 2 == 0 else list(chains.items())[::-1]
                for name, chain in order:
                    started = time.perf_counter()
                    chain(*inputs)
                    times[name].append(time.perf_counter() - started)
        base, this = statistics.median(times["baseline"]), statistics.median(times["this"])
        difference = float((outputs["baseline"].float() - outputs["this"].float()).abs().max())
        print(
            f"| {size} | {base * 1000 / size:.2f} | {this * 1000 / size:.2f} | {base / this:.2f}x | {difference:.1e} |"
        )
    return 0
