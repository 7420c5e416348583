"""BatchQueue on its own (payload-agnostic): coalescing, spanning, cancellation, deadlines, failure isolation,
work-weighted bounds."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ddgan.server.batching import (
    BatchFailedError,
    BatchQueue,
    DeadlineExceededError,
    QueueClosedError,
    QueueFullError,
    Worker,
)
from ddgan.server.tickets import Priority, Slice, Ticket

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Recorder:
    """A fake `run_batch` over payloads that are lists of labels: returns each slice's labels, records calls."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, slices: list[Slice], progress) -> list[list[int]]:
        parts = [piece.payload[piece.start : piece.start + piece.count] for piece in slices]
        self.calls.append([label for part in parts for label in part])
        self.entered.set()
        self.release.wait(10)
        if self.fail_on in self.calls[-1]:
            raise ValueError("boom")
        return parts


def make_queue(recorder: Recorder, **kwargs) -> BatchQueue:
    options = {"max_batch_units": 4, "max_wait_s": 0.0, "max_queue_units": 16, **kwargs}
    queue = BatchQueue("test", [Worker("cpu", recorder)], **options)
    queue.start()
    return queue


def far() -> float:
    return time.monotonic() + 30


def submit(queue: BatchQueue, labels: list[int], cost: float = 1.0, deadline: float | None = None) -> Ticket:
    return queue.submit(labels, len(labels), cost, deadline or far())


def flat(result) -> list[int]:
    return [label for part in result.parts for label in part]


async def test_concurrent_jobs_share_a_batch_within_max_wait():
    recorder = Recorder()
    queue = make_queue(recorder, max_wait_s=0.5)
    first = submit(queue, [1, 2])
    second = submit(queue, [3])
    results = await asyncio.gather(first.future, second.future)
    assert recorder.calls == [[1, 2, 3]]
    assert results[0].batches == results[1].batches == 1
    assert flat(results[0]) == [1, 2] and flat(results[1]) == [3]
    queue.close(5)


async def test_a_large_job_spans_batches_in_seed_order():
    recorder = Recorder()
    queue = make_queue(recorder)
    ticket = submit(queue, list(range(100, 110)))
    result = await ticket.future
    assert recorder.calls == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]
    assert result.batches == 3
    assert flat(result) == list(range(100, 110))
    queue.close(5)


async def test_tickets_of_any_cost_share_a_batch_in_arrival_order():
    """The queue never groups by payload (a DDPM batch mixes step counts): FIFO up to the batch size."""
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder, max_batch_units=8)
    blocker = submit(queue, [1], cost=5)
    await asyncio.to_thread(recorder.entered.wait, 5)
    tickets = [submit(queue, [10], cost=5), submit(queue, [20], cost=9), submit(queue, [30], cost=5)]
    recorder.release.set()
    await asyncio.gather(blocker.future, *(t.future for t in tickets))
    assert recorder.calls == [[1], [10, 20, 30]]
    queue.close(5)


async def test_cancelled_and_expired_jobs_never_reach_the_sampler():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder)
    blocker = submit(queue, [1])
    await asyncio.to_thread(recorder.entered.wait, 5)
    gone = submit(queue, [50, 51])
    expired = submit(queue, [60], deadline=time.monotonic() + 0.05)
    kept = submit(queue, [70])
    assert queue.queued_units == 4
    queue.cancel(gone)
    assert queue.queued_units == 2
    await asyncio.sleep(0.1)
    recorder.release.set()
    with pytest.raises(DeadlineExceededError):
        await expired.future
    await asyncio.gather(blocker.future, kept.future)
    assert recorder.calls == [[1], [70]]
    assert not gone.future.done() and queue.queued_units == 0
    queue.close(5)


async def test_a_failing_batch_fails_its_jobs_and_the_worker_goes_on():
    recorder = Recorder(fail_on=13)
    queue = make_queue(recorder, max_batch_units=2)
    spanning = submit(queue, [11, 12, 13, 14])  # the second batch fails
    with pytest.raises(BatchFailedError, match="ValueError: boom"):
        await spanning.future
    assert recorder.calls == [[11, 12], [13, 14]]
    healthy = await submit(queue, [7]).future
    assert flat(healthy) == [7]
    queue.close(5)


async def test_the_queue_is_bounded_in_units_and_in_work():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder, max_batch_units=2, max_queue_units=4, max_queue_work=10)
    running = submit(queue, [1, 2], cost=5)
    await asyncio.to_thread(recorder.entered.wait, 5)
    waiting = submit(queue, [3], cost=8)  # 8 of 10 image-steps
    assert (queue.queued_units, queue.queued_work) == (1, 8)
    with pytest.raises(QueueFullError) as by_work:
        submit(queue, [4], cost=3)  # 1 image fits the unit bound, 3 image-steps do not fit the work bound
    assert (by_work.value.queued_units, by_work.value.queued_work) == (1, 8)
    cheap = submit(queue, [5, 6], cost=1)  # 2 image-steps still fit
    with pytest.raises(QueueFullError):
        submit(queue, [7, 8], cost=0)  # the unit bound: 3 + 2 > 4
    recorder.release.set()
    await asyncio.gather(running.future, waiting.future, cheap.future)
    assert (queue.queued_units, queue.queued_work) == (0, 0)
    queue.close(5)


async def test_close_finishes_queued_work_then_refuses():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder)
    first = submit(queue, [1])
    await asyncio.to_thread(recorder.entered.wait, 5)
    second = submit(queue, [2])
    closing = asyncio.create_task(asyncio.to_thread(queue.close, 5))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueClosedError):
        submit(queue, [3])
    recorder.release.set()
    await closing
    assert flat(await first.future) == [1]
    assert flat(await second.future) == [2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_interactive_first_and_batch_tickets_promoted_after_aging():
    """Priority order, then aging: a batch ticket waiting aging_s ranks by arrival with the interactive ones."""
    for aged, expected in ((False, [[1], [11], [12], [21], [22]]), (True, [[1], [21], [11], [22], [12]])):
        clock, recorder = FakeClock(), Recorder()
        recorder.release.clear()
        queue = BatchQueue(
            "test", [Worker("cpu", recorder)], max_batch_units=1, max_wait_s=0.0, max_queue_units=16,
            aging_s=2.0, clock=clock,
        )  # fmt: skip
        queue.start()
        blocker = queue.submit([1], 1, 1.0, 1e9)
        await asyncio.to_thread(recorder.entered.wait, 5)
        tickets = []
        for at, label, priority in ((0.1, 21, Priority.BATCH), (0.2, 11, Priority.INTERACTIVE),
                                    (0.3, 22, Priority.BATCH), (0.4, 12, Priority.INTERACTIVE)):  # fmt: skip
            clock.now = at
            tickets.append(queue.submit([label], 1, 1.0, 1e9, priority))
        clock.now = 2.35 if aged else 1.0  # 21 (2.25 s old) and 22 (2.05 s) have aged; 11, 12 are interactive
        recorder.release.set()
        await asyncio.gather(blocker.future, *(t.future for t in tickets))
        assert recorder.calls == expected, aged
        queue.close(5)
