"""Work accounting of image batches: padded image-steps, and DDPM requests of different steps sharing batches.

The DDPM runs at random weights (the `tiny` UNet, 16x16): what is checked is how many UNet rows a batch really
computes, counted by a hook on the UNet, against the cost model the queue's Retry-After uses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from ddgan.model.sampler import open_sampler
from ddgan.server.batching import BatchQueue, Worker
from ddgan.server.work import ImageWork, image_batch_cost, padded_image_steps, run_image_batch


def test_padded_image_steps_counts_each_iteration_at_its_padded_size():
    assert padded_image_steps([4, 4, 4], None) == 12
    assert padded_image_steps([1, 3], None) == 1 * 2 + 2 * 1  # iteration 0 runs both, 1..2 the second only
    assert padded_image_steps([1, 3], 4) == 3 * 4  # every pass is padded to 4 rows
    assert padded_image_steps([2] * 5, 4) == 2 * 8  # 5 images: two passes of 4
    assert padded_image_steps(list(range(50, 58)), 8) == 57 * 8
    assert padded_image_steps([], 8) == 0
    # remainder sizes: the last pass pads only up to the smallest verified size that holds it
    assert padded_image_steps([2] * 5, 4, (1, 2)) == 2 * (4 + 1)
    assert padded_image_steps([2] * 7, 4, (1, 2)) == 2 * (4 + 4)  # 3 left over: no verified size below 4 holds it
    assert padded_image_steps([1, 3], 4, (1, 2)) == 1 * 2 + 2 * 1  # iteration 0: two rows; then one


class CountingSampler:
    """A real DDPM sampler whose UNet rows (padding included) are counted, per `sample` call."""

    def __init__(self, micro_batch: int) -> None:
        self.inner = open_sampler(kind="ddpm", preset="tiny", random_weights=True, micro_batch=micro_batch)
        self.rows = 0
        self.calls = 0
        self.inner.unet.register_forward_pre_hook(self._count)

    def _count(self, module: Any, args: tuple[Any, ...]) -> None:
        self.rows += args[0].shape[0]

    @property
    def info(self):
        return self.inner.info

    def sample(self, seeds, steps=None, progress=None) -> torch.Tensor:
        self.calls += 1
        return self.inner.sample(seeds, steps=steps, progress=progress)


async def run_requests(sampler: CountingSampler, steps: list[int]) -> None:
    queue = BatchQueue(
        "ddpm",
        [Worker("cpu", lambda slices, progress: run_image_batch(sampler, slices, progress))],
        max_batch_units=8,
        max_wait_s=0.5,  # all eight arrive within it
        max_queue_units=64,
        batch_cost=image_batch_cost(sampler.info.micro_batch),
    )
    queue.start()
    tickets = [queue.submit(ImageWork([100 + i], s), 1, s, deadline=1e12) for i, s in enumerate(steps)]
    await asyncio.gather(*(t.future for t in tickets))
    queue.close(5)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_eight_ddpm_requests_of_different_steps_cost_what_eight_of_equal_steps_cost():
    """The issue's 50..57 steps, scaled down to 10..17 to keep the suite fast."""
    mixed, equal = CountingSampler(micro_batch=8), CountingSampler(micro_batch=8)
    await run_requests(mixed, list(range(10, 18)))
    await run_requests(equal, [10] * 8)
    assert mixed.calls == equal.calls == 1  # one shared batch each, whatever the steps
    assert mixed.rows == padded_image_steps(list(range(10, 18)), 8) == 17 * 8
    assert equal.rows == 10 * 8
    # The longest image's steps at one padded batch, not eight padded one-image batches (8 x 13.5 x 8 rows).
    assert mixed.rows / equal.rows == pytest.approx(17 / 10)
