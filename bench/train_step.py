"""`ddgan bench train-step`: a DDGAN training step in fp32 against bf16 autocast, side by side, in one run.

Two trainers of the same recipe and seed (one `precision = "fp32"`, one `"bf16"`) step on the same batches,
alternately, so that load drifts on a shared machine hit both alike. Reported per precision: the median step
time and the losses along the way (equal curves within noise are the condition for adopting bf16 anywhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train-step", help="DDGAN training step: fp32 vs bf16 autocast, interleaved")
    parser.add_argument("--preset", default="mnist", help="training recipe (default mnist)")
    parser.add_argument("--data", required=True, help="training data, as for ddgan train")
    parser.add_argument("--steps", type=int, default=20, help="steps per precision (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    parser.add_argument("--windows", type=int, default=4, help="loss curve: mean losses over this many windows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs it may use)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddgan.bench.sampler import machine_description
    from ddgan.model.threads import set_threads
    from ddgan.training.data import build_dataset
    from ddgan.training.distributed import DistContext
    from ddgan.training.train_config import recipe_for
    from ddgan.training.trainer import Trainer

    set_threads(args.threads)
    device = torch.device(args.device)
    base = recipe_for(args.preset)
    g = base.model.generator
    dataset = build_dataset(args.data, g.image_size, g.num_channels, dataset=base.dataset, seed=base.seed)
    precisions = ("fp32", "bf16")
    with tempfile.TemporaryDirectory() as workdir:
        ctx = DistContext(device=device)
        trainers = {
            p: Trainer(dataclasses.replace(base, precision=p), dataset, Path(workdir) / p, ctx) for p in precisions
        }
        batches = trainers["fp32"].stream.batches(0)
        times: dict[str, list[float]] = {p: [] for p in precisions}
        losses: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
        for index in range(args.warmup + args.steps):
            x_0 = next(batches).to(device)
            for precision, trainer in trainers.items():
                started = time.perf_counter()
                stats = trainer.train_step(x_0)
                elapsed = time.perf_counter() - started
                if index >= args.warmup:
                    times[precision].append(elapsed)
                    losses[precision].append((float(stats["loss_d"]), float(stats["loss_g"])))
    print(
        f"# ddgan bench train-step: {args.preset} recipe (batch {base.batch_size}), {args.steps} steps each, "
        f"interleaved; {machine_description(device)}\ncommand: ddgan {shlex.join(sys.argv[1:])}\n"
    )
    fp32 = statistics.median(times["fp32"])
    print("| precision | median s/step | × fp32 speed | mean loss_d | mean loss_g | last loss_d | last loss_g |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for precision in precisions:
        median = statistics.median(times[precision])
        d = [x for x, _ in losses[precision]]
        gl = [y for _, y in losses[precision]]
        print(
            f"| {precision} | {median:.3f} | {fp32 / median:.2f} | {statistics.mean(d):.3f} | "
            f"{statistics.mean(gl):.3f} | {d[-1]:.3f} | {gl[-1]:.3f} |"
        )
    print()
    print(loss_curve_table(losses, args.warmup, max(1, min(args.windows, args.steps))))
    return 0


def loss_curve_table(losses: dict[str, list[tuple[float, float]]], first_step: int, windows: int) -> str:
    """Mean loss_d / loss_g per window of consecutive timed steps, one column per precision."""
    names = list(losses)
    steps = len(losses[names[0]])
    bounds = [round(steps * w / windows) for w in range(windows + 1)]
    lines = ["| steps | " + " | ".join(f"{p} loss_d / loss_g" for p in names) + " |", "|---|" + "---:|" * len(names)]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        cells = []
        for name in names:
            window = losses[name][start:stop]
            cells.append(f"{statistics.mean(d for d, _ in window):.3f} / {statistics.mean(g for _, g in window):.3f}")
        lines.append(f"| {first_step + start + 1}–{first_step + stop} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
