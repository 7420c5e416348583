"""BatchQueue on its own (payload-agnostic): coalescing, spanning, cancellation, deadlines, failure isolation,
Retry-After."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from ddgan.server.batching import (
    BatchFailedError,
    BatchQueue,
    DeadlineExceededError,
    QueueClosedError,
    QueueFullError,
    Slice,
    Ticket,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Recorder:
    """A fake `run_batch` over payloads that are lists of labels: returns each slice's labels, records calls."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, slices: list[Slice]) -> list[list[int]]:
        parts = [piece.payload[piece.start : piece.start + piece.count] for piece in slices]
        self.calls.append([label for part in parts for label in part])
        self.entered.set()
        self.release.wait(10)
        if self.fail_on in self.calls[-1]:
            raise ValueError("boom")
        return parts


def make_queue(recorder: Recorder, **kwargs) -> BatchQueue:
    options = {"max_batch_units": 4, "max_wait_s": 0.0, "max_queue_units": 16, **kwargs}
    queue = BatchQueue("test", recorder, **options)
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


async def test_queue_bound_and_retry_after_from_measured_throughput():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder, max_batch_units=2, max_queue_units=4)
    queue.record_throughput(work=10, seconds=1.0)  # 10 image-steps/s = 5 images/s
    running = submit(queue, [1, 2], cost=2)
    await asyncio.to_thread(recorder.entered.wait, 5)
    waiting = submit(queue, [3, 4, 5, 6], cost=2)
    with pytest.raises(QueueFullError) as raised:
        submit(queue, [7], cost=2)
    # To fit 1 more image, the running batch (4 image-steps) and 1 queued image (2) must drain: 6 / 10 per s.
    assert raised.value.queued_units == 4
    assert raised.value.retry_after_s == max(1, math.ceil((4 + 4 * 2 - (4 - 1) * 2) / 10))
    with pytest.raises(QueueFullError) as big:
        submit(queue, [8, 9, 10, 11], cost=2)
    assert big.value.retry_after_s == math.ceil((4 + 8 - 0) / 10)
    recorder.release.set()
    await asyncio.gather(running.future, waiting.future)
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
