"""What one unit of queued work is: an image, given by its seed and its denoising steps.

The batch queue (`server.batching`) is payload-agnostic; this module is the image-specific side of it: the
payload of a /generate ticket, the function that runs a batch of such slices on a sampler, and what a batch
costs. Work is counted in image-steps (one image through one denoising step); a batch's *cost* is the
image-steps its sampler really computes, padding included: a DDPM iteration evaluates the UNet on the images
still running, each forward pass padded to the sampler's `micro_batch` rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddgan.model.images import to_uint8
from ddgan.model.sampler import Progress, Sampler
from ddgan.server.tickets import BatchCost, Slice


@dataclass(frozen=True)
class ImageWork:
    """The images of one request: image i has seed `seeds[i]` and runs `steps` denoising steps."""

    seeds: list[int]
    steps: int


def run_image_batch(sampler: Sampler, slices: list[Slice], progress: Progress) -> list[np.ndarray]:
    """One sampler call for every slice of the batch (images of different steps share it); uint8 per slice.

    `progress` is the queue's per-step hook: it raises `SamplingStoppedError` when nobody waits for the batch.
    """
    seeds: list[int] = []
    steps: list[int] = []
    for piece in slices:
        work: ImageWork = piece.payload
        seeds += work.seeds[piece.start : piece.start + piece.count]
        steps += [work.steps] * piece.count
    images = to_uint8(sampler.sample(seeds, steps=steps, progress=progress))
    if images.shape[0] != len(seeds):
        raise RuntimeError(f"sampler returned {images.shape[0]} images for {len(seeds)} seeds")
    bounds = np.cumsum([piece.count for piece in slices])[:-1]
    return list(np.split(images, bounds))


def padded_image_steps(steps_per_image: Sequence[int], micro_batch: int | None) -> float:
    """Image-steps one sampler call computes: iteration k runs the images with more than k steps, in forward
    passes of exactly `micro_batch` rows (the last one padded) when the sampler has one."""
    counts = sorted(steps_per_image)
    total, done_iterations = 0, 0
    for finished, steps in enumerate(counts):
        # Iterations done_iterations .. steps-1 run the images from index `finished` on.
        active = len(counts) - finished
        rows = math.ceil(active / micro_batch) * micro_batch if micro_batch else active
        total += (steps - done_iterations) * rows
        done_iterations = steps
    return float(total)


def image_batch_cost(micro_batch: int | None) -> BatchCost:
    """The queue's `batch_cost` for image slices run by a sampler with this `micro_batch`."""

    def cost(slices: Sequence[Slice]) -> float:
        steps: list[int] = []
        for piece in slices:
            steps += [piece.payload.steps] * piece.count
        return padded_image_steps(steps, micro_batch)

    return cost
