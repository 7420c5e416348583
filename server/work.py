"""What one unit of queued work is: an image, given by its seed and its denoising steps.

The batch queue (`server.batching`) is payload-agnostic; this module is the image-specific side of it: the
payload of a /generate ticket and the function that runs a batch of such slices on a sampler. A payload may
carry a `WorkProgress` (an async job's), told from the worker thread when its images start, advance and finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ddgan.model.images import to_uint8
from ddgan.model.sampler import Sampler
from ddgan.model.sampling import SamplingStoppedError
from ddgan.server.batching import Slice


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


def run_image_batch(sampler: Sampler, slices: list[Slice]) -> list[np.ndarray]:
    """One sampler call for every slice of the batch (images of different steps share it); uint8 per slice.

    Between denoising iterations the call stops (`SamplingStoppedError`) once every ticket in the batch was
    given up (cancelled job, client gone, deadline): nobody would read the images.
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

    def progress(done: int, total: int) -> None:
        # `finished` is a bool the event loop sets under the queue's lock; reading it unlocked is safe here.
        if all(piece.ticket.finished for piece in slices):
            raise SamplingStoppedError("every request in this batch was given up")
        for piece in slices:
            work: ImageWork = piece.payload
            if work.progress is not None:
                # `total` spans the longest image of the call: an image of fewer steps is done earlier.
                work.progress.steps_done(piece.count, min(work.steps, done * longest // total))

    images = to_uint8(sampler.sample(seeds, steps=steps, progress=progress))
    if images.shape[0] != len(seeds):
        raise RuntimeError(f"sampler returned {images.shape[0]} images for {len(seeds)} seeds")
    for piece in slices:
        work = piece.payload
        if work.progress is not None:
            work.progress.images_done(piece.count)
    bounds = np.cumsum([piece.count for piece in slices])[:-1]
    return list(np.split(images, bounds))
