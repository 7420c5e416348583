"""Compute isolation on a shared CPU: DDGAN p50 latency alone, beside DDPM load, and beside an isolated DDPM.

`python -m ddgan.bench.isolation [--seconds 15]` builds the two samplers with random weights (DDGAN `mnist`
preset, DDPM `tiny` UNet) and the server's own batch queues and worker preparation (`server.runtime.preparer`:
per-worker threads and nice), then sends one-image DDGAN requests back to back in three phases: alone; while a
DDPM queue is kept full (1000-step batches, the baseline with the process's threads and normal priority); and
while the DDPM worker runs with `threads = 1` and `nice = 10`. Phases alternate in rounds so load drifts on a
shared machine hit all of them alike; the report gives each phase's p50 and the ratios to "alone".
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddgan.bench.sampler import machine_description
from ddgan.model.sampler import open_sampler
from ddgan.server.batching import BatchQueue, Worker
from ddgan.server.registry import ModelEntry
from ddgan.server.runtime import preparer
from ddgan.server.warmup import without_warm_up
from ddgan.server.work import ImageWork, image_batch_cost, run_image_batch

DDPM_STEPS = 1000


def queue_of(name: str, sampler: Any, entry: ModelEntry, threads: int | None, nice: int) -> BatchQueue:
    warmed = without_warm_up(entry, sampler)
    return BatchQueue(
        name,
        [Worker("cpu", functools.partial(run_image_batch, warmed.sampler), preparer(nice, threads, warmed))],
        max_batch_units=entry.max_batch_images,
        max_wait_s=0.0,
        max_queue_units=entry.max_queue_images,
        batch_cost=image_batch_cost(warmed.sampler.info.micro_batch),
    )


async def ddgan_latencies(queue: BatchQueue, seconds: float) -> list[float]:
    latencies, seed, end = [], 0, time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        await queue.submit(ImageWork([seed], 4), 1, 4, deadline=time.monotonic() + 600).future
        latencies.append(time.perf_counter() - started)
        seed += 1
    return latencies


async def phase(ddgan: BatchQueue, ddpm_sampler: Any, ddpm_entry: ModelEntry, mode: str, seconds: float) -> float:
    if mode == "alone":
        return float(np.median(await ddgan_latencies(ddgan, seconds)))
    threads, nice = (None, 0) if mode == "ddpm" else (1, 10)
    ddpm = queue_of("ddpm", ddpm_sampler, ddpm_entry, threads, nice)
    ddpm.start()
    load = [ddpm.submit(ImageWork(list(range(8)), DDPM_STEPS), 8, DDPM_STEPS, time.monotonic() + 600) for _ in (0, 1)]
    await asyncio.sleep(0.5)  # the DDPM batch is running
    p50 = float(np.median(await ddgan_latencies(ddgan, seconds)))
    for ticket in load:
        ddpm.cancel(ticket)  # its batch stops at the next step
    ddpm.close(30)
    return p50


async def main(seconds: float, rounds: int) -> dict[str, Any]:
    ddgan_entry = ModelEntry(dataset="mnist", sampler="ddgan", path=Path("mnist"), max_batch_images=8)
    ddpm_entry = ModelEntry(dataset="mnist", sampler="ddpm", path=Path("mnist-ddpm"), max_batch_images=8)
    ddgan_sampler = open_sampler(preset="mnist", random_weights=True, micro_batch=1)
    ddpm_sampler = open_sampler(kind="ddpm", preset="tiny", dataset="mnist", random_weights=True, micro_batch=8)
    ddgan_sampler.sample([0])
    ddpm_sampler.sample(list(range(8)), steps=2)
    ddgan = queue_of("ddgan", ddgan_sampler, ddgan_entry, None, 0)
    ddgan.start()
    results: dict[str, list[float]] = {"alone": [], "ddpm": [], "ddpm_isolated": []}
    for _ in range(rounds):
        for mode in results:
            results[mode].append(await phase(ddgan, ddpm_sampler, ddpm_entry, mode, seconds))
    ddgan.close(30)
    p50 = {mode: float(np.median(values)) * 1000 for mode, values in results.items()}
    return {
        "machine": machine_description(torch.device("cpu")),
        "torch": torch.__version__,
        "rounds": rounds,
        "seconds_per_phase": seconds,
        "ddgan_p50_ms": p50,
        "ratio_to_alone": {mode: p50[mode] / p50["alone"] for mode in p50},
        "per_round_ms": {mode: [round(v * 1000, 1) for v in values] for mode, values in results.items()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds, args.rounds)), indent=2))  # noqa: T201
