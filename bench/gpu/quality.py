"""Stage `quality`: the bundled DDPM's samples at its full 1000 steps, for the n = 10,000 scores a CPU cannot afford.

On two CPU cores 1,000 of these samples take about an hour, so the DDPM baseline of issue 17 has been scored at
n = 1000 only. Here the stage draws seeds 0..n-1 on the device and writes them, after every batch, as one
`ddgan eval --save-samples` archive (`quality-<model>.npz` in the results folder, which the device run sends
back). A stage cut at its limit leaves the seeds it finished, still a valid shard. Scoring needs the MNIST test
set, which stays off the device: `ddgan eval --samples quality-mnist-ddpm.npz --classifier models/mnist-classifier
--data ../shared/data/mnist.npz` gives the figures one `ddgan eval --model models/mnist-ddpm --n 10000` would.
"""

from __future__ import annotations

import time

import numpy as np

from ddgan.bench.gpu.common import REPO, Plan, StageRecord


def run(stage: str, plan: Plan, record: StageRecord) -> bool:
    from ddgan.model.images import to_uint8
    from ddgan.model.noise import image_seeds
    from ddgan.model.sampler import open_sampler
    from ddgan.training.sample_folders import manifest, sampler_identity, write_archive

    model = f"models/{plan.quality_model}"
    sampler = open_sampler(REPO / model, device=plan.device)
    steps = sampler.info.check_steps(plan.quality_steps)
    identity = sampler_identity(sampler.info, steps)
    seeds = image_seeds(0, plan.quality_n)
    target = record.results_dir / f"quality-{plan.quality_model}.npz"
    pixels: list[np.ndarray] = []
    done: list[int] = []
    slowest = 0.0
    started = time.monotonic()
    for first in range(0, len(seeds), plan.quality_batch):
        if slowest and record.seconds_left() < 1.2 * slowest:
            record.note(f"stopped at its time limit after {len(done)} of {len(seeds)} samples")
            break
        chunk = seeds[first : first + plan.quality_batch]
        batch_started = time.monotonic()
        pixels.append(to_uint8(sampler.sample(chunk, steps=steps)))  # to_uint8 copies to the host: a sync point
        seconds = time.monotonic() - batch_started
        slowest = max(slowest, seconds)
        done += chunk
        write_archive(target, np.concatenate(pixels), done, manifest(identity, model, done))
        record.add(
            model=model,
            steps=steps,
            seeds=[chunk[0], chunk[-1]],
            batch=len(chunk),
            seconds=round(seconds, 2),
            images_per_s=round(len(chunk) / seconds, 1),
            image_steps_per_s=round(len(chunk) * steps / seconds),
        )
    total = time.monotonic() - started
    record.set_summary(
        f"{model}: {len(done)} of {len(seeds)} samples at {steps} steps in {total:.0f} s -> {target.name} "
        f"({identity['device']}, {identity['dtype']}); score it here with ddgan eval --samples"
    )
    return len(done) == len(seeds)
