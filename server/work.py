"""What one unit of queued work is: an image, given by its seed and its denoising steps.

The batch queue (`server.batching`) is payload-agnostic; this module is the image-specific side of it: the
payload of a /generate ticket, the function that runs a batch of such slices on a sampler, and what a batch
costs. A payload may carry a `WorkProgress` (an async job's), told from the worker thread when its images
start, advance and finish. Work is counted in image-steps (one image through one denoising step); a batch's
*cost* is the image-steps its sampler really computes, padding included: a DDPM iteration evaluates the UNet
on the images still running, each forward pass padded to the sampler's `micro_batch` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ddgan.model.images import to_uint8
from ddgan.model.sampler import Progress, Sampler, SamplingStoppedError
from ddgan.model.sampling import forward_passes
from ddgan.server.tickets import BatchCost, Slice


class WorkProgress(Protocol):
    """Progress of one request's images, called on the worker thread (keep it short, never block)."""

    def batch_started(self, images: int) -> None: ...

    def steps_done(self, images: int, steps: int) -> None:
        """`images` of this request in the running batch have each done `steps` of their denoising steps."""
        ...

    def images_done(self, images: int) -> None: ...


@dataclass(frozen=True)
class ImageWork:
    """The images of one request: image i has seed `seeds[i]` and runs `steps` denoising steps."""

    seeds: list[int]
    steps: int
    progress: WorkProgress | None = None


def run_image_batch(sampler: Sampler, slices: list[Slice], progress: Progress | None = None) -> list[np.ndarray]:
    """One sampler call for every slice of the batch (images of different steps share it); uint8 per slice.

    Between denoising iterations the call stops (`SamplingStoppedError`) once every ticket in the batch was
    given up (cancelled job, client gone); `progress`, the queue's per-step hook, also stops it once every
    ticket is past its deadline: nobody would read the images.
    """
    seeds: list[int] = []
    steps: list[int] = []
    for piece in slices:
        work: ImageWork = piece.payload
        seeds += work.seeds[piece.start : piece.start + piece.count]
        steps += [work.steps] * piece.count
        if work.progress is not None:
            work.progress.batch_started(piece.count)
    longest = max(steps)

    def step(done: int, total: int) -> None:
        # `finished` is a bool the event loop sets under the queue's lock; reading it unlocked is safe here.
        if all(piece.ticket.finished for piece in slices):
            raise SamplingStoppedError("every request in this batch was given up")
        if progress is not None:
            progress(done, total)
        for piece in slices:
            work: ImageWork = piece.payload
            if work.progress is not None:
                # `total` spans the longest image of the call: an image of fewer steps is done earlier.
                work.progress.steps_done(piece.count, min(work.steps, done * longest // total))

    images = to_uint8(sampler.sample(seeds, steps=steps, progress=step))
    if images.shape[0] != len(seeds):
        raise RuntimeError(f"sampler returned {images.shape[0]} images for {len(seeds)} seeds")
    for piece in slices:
        work = piece.payload
        if work.progress is not None:
            work.progress.images_done(piece.count)
    bounds = np.cumsum([piece.count for piece in slices])[:-1]
    return list(np.split(images, bounds))


def padded_image_steps(
    steps_per_image: Sequence[int], micro_batch: int | None, remainder_sizes: Sequence[int] = ()
) -> float:
    """Image-steps one sampler call computes: iteration k runs the images with more than k steps, in forward
    passes of `micro_batch` rows (the last one padded, see `model.sampling.forward_passes`) when it has one."""
    counts = sorted(steps_per_image)
    total, done_iterations = 0, 0
    for finished, steps in enumerate(counts):
        # Iterations done_iterations .. steps-1 run the images from index `finished` on.
        active = len(counts) - finished
        rows = sum(forward_passes(active, micro_batch, remainder_sizes))
        total += (steps - done_iterations) * rows
        done_iterations = steps
    return float(total)


def image_batch_cost(micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> BatchCost:
    """The queue's `batch_cost` for image slices run by a sampler with this `micro_batch` (and remainders)."""

    def cost(slices: Sequence[Slice]) -> float:
        steps: list[int] = []
        for piece in slices:
            steps += [piece.payload.steps] * piece.count
        return padded_image_steps(steps, micro_batch, remainder_sizes)

    return cost
