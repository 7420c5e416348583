"""Work nobody waits for: a batch whose every ticket is cancelled or past its deadline stops at its next
denoising step (the sampler's progress hook), and the work it did not do is counted by reason."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from ddgan.model.sampler import open_sampler
from ddgan.server.batching import BatchQueue, DeadlineExceededError, Worker
from ddgan.server.tickets import Ticket
from ddgan.server.work import ImageWork, image_batch_cost, run_image_batch

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEPS = 1000  # far more than the test lets run: a batch that finishes was not stopped


class Observer:
    def __init__(self) -> None:
        self.dropped_work: dict[str, float] = defaultdict(float)
        self.batches: list[int] = []

    def batch_done(self, device: str, units: int, seconds: float) -> None:
        self.batches.append(units)

    def queue_wait(self, seconds: float) -> None: ...

    def queued(self, units: int, work: float) -> None: ...

    def dropped(self, work: float, reason: str) -> None:
        self.dropped_work[reason] += work


@pytest.fixture(scope="module")
def ddpm():
    return open_sampler(kind="ddpm", preset="tiny", random_weights=True, micro_batch=2)


def ddpm_queue(sampler, observer: Observer, max_wait_s: float = 0.0) -> BatchQueue:
    queue = BatchQueue(
        "ddpm",
        [Worker("cpu", lambda slices, progress: run_image_batch(sampler, slices, progress))],
        max_batch_units=4,
        max_wait_s=max_wait_s,
        max_queue_units=16,
        batch_cost=image_batch_cost(sampler.info.micro_batch),
        observer=observer,
    )
    queue.start()
    return queue


async def running(ticket: Ticket, iterations: int = 1) -> None:
    while ticket.step_progress is None or ticket.step_progress[0] < iterations:
        await asyncio.sleep(0.005)


async def test_a_batch_left_with_nobody_stops_at_its_next_step(ddpm):
    observer = Observer()
    queue = ddpm_queue(ddpm, observer, max_wait_s=0.5)  # both tickets share the first batch
    first = queue.submit(ImageWork([1, 2], STEPS), 2, STEPS, deadline=time.monotonic() + 600)
    second = queue.submit(ImageWork([3], STEPS), 1, STEPS, deadline=time.monotonic() + 600)
    await running(first)
    queue.cancel(first, "disconnected")
    await running(second, first.step_progress[0] + 2)  # one ticket still waits: the batch goes on
    queue.cancel(second, "cancelled")
    stopped_at = second.step_progress[0]
    follow = queue.submit(ImageWork([9], 1), 1, 1, deadline=time.monotonic() + 600)  # runs once the batch stopped
    await asyncio.wait_for(follow.future, 60)
    done, total = second.step_progress
    assert total == STEPS and done <= stopped_at + 1  # stopped at the next step
    assert observer.batches == [1]  # only the follow-up batch completed
    assert first.step_progress == second.step_progress  # one batch held both
    # The stopped batch's 3 images x 1000 steps, less what ran, split by the reason each ticket gave.
    undone = 1 - done / STEPS
    assert observer.dropped_work["disconnected"] == pytest.approx(2 * STEPS * undone)
    assert observer.dropped_work["cancelled"] == pytest.approx(1 * STEPS * undone)
    assert not first.future.done() and not second.future.done()  # their handlers had already given up
    queue.close(5)


async def test_a_batch_past_every_deadline_stops_and_fails_with_deadline_exceeded(ddpm):
    observer = Observer()
    queue = ddpm_queue(ddpm, observer)
    ticket = queue.submit(ImageWork([5], STEPS), 1, STEPS, deadline=time.monotonic() + 0.5)
    queued = queue.submit(ImageWork([6, 7, 8, 9, 10], STEPS), 5, STEPS, deadline=time.monotonic() + 0.5)
    with pytest.raises(DeadlineExceededError, match="while its batch ran"):
        await asyncio.wait_for(ticket.future, 60)
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(queued.future, 60)
    assert ticket.step_progress[0] < STEPS and observer.batches == []
    # The batch held ticket 1 and 3 of the other's images; its 2 left over never left the queue.
    done = ticket.step_progress[0]
    assert observer.dropped_work["deadline"] == pytest.approx(4 * STEPS * (1 - done / STEPS) + 2 * STEPS)
    queue.close(5)
