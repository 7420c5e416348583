"""What one unit of queued work is: an image, given by its seed and its denoising steps.

The batch queue (`server.batching`) is payload-agnostic; this module is the image-specific side of it: the
payload of a /generate ticket and the function that runs a batch of such slices on a sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddgan.model.images import to_uint8
from ddgan.model.sampler import Sampler, SamplingStoppedError
from ddgan.server.batching import BatchAbandonedError, Slice


@dataclass(frozen=True)
class ImageWork:
    """The images of one request: image i has seed `seeds[i]` and runs `steps` denoising steps."""

    seeds: list[int]
    steps: int


def run_image_batch(sampler: Sampler, slices: list[Slice]) -> list[np.ndarray]:
    """One sampler call for every slice of the batch (images of different steps share it); uint8 per slice.

    Raises `BatchAbandonedError` when no request waits for the batch any more (checked at every denoising step).
    """
    seeds: list[int] = []
    steps: list[int] = []
    for piece in slices:
        work: ImageWork = piece.payload
        seeds += work.seeds[piece.start : piece.start + piece.count]
        steps += [work.steps] * piece.count

    def stop_when_abandoned(done: int, total: int) -> None:
        # Every request of the batch gave up (shutdown, deadline, disconnect): stop at this denoising step.
        if all(piece.ticket.finished for piece in slices):
            raise SamplingStoppedError

    try:
        images = to_uint8(sampler.sample(seeds, steps=steps, progress=stop_when_abandoned))
    except SamplingStoppedError:
        raise BatchAbandonedError from None
    if images.shape[0] != len(seeds):
        raise RuntimeError(f"sampler returned {images.shape[0]} images for {len(seeds)} seeds")
    bounds = np.cumsum([piece.count for piece in slices])[:-1]
    return list(np.split(images, bounds))
