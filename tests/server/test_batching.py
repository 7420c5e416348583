"""BatchQueue on its own: coalescing, spanning, cancellation, deadlines, failure isolation, Retry-After."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
import torch

from ddgan.server.batching import (
    BatchFailedError,
    BatchQueue,
    DeadlineExceededError,
    QueueClosedError,
    QueueFullError,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Recorder:
    """A fake sampler: image i is filled with the value that to_uint8 maps to seed_i % 200, to trace results."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[list[int], int | None]] = []
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, seeds: list[int], steps: int | None) -> torch.Tensor:
        self.calls.append((list(seeds), steps))
        self.entered.set()
        self.release.wait(10)
        if self.fail_on in seeds:
            raise ValueError("boom")
        levels = torch.tensor([seed % 200 for seed in seeds], dtype=torch.float32)
        return (levels / 127.5 - 1).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)


def make_queue(recorder: Recorder, **kwargs) -> BatchQueue:
    options = {"max_batch_images": 4, "max_wait_s": 0.0, "max_queue_images": 16, "default_steps": 2, **kwargs}
    queue = BatchQueue("test", recorder, **options)
    queue.start()
    return queue


def far() -> float:
    return time.monotonic() + 30


def pixel_seeds(images) -> list[int]:
    return [int(image[0, 0, 0]) for image in images]


async def test_concurrent_jobs_share_a_batch_within_max_wait():
    recorder = Recorder()
    queue = make_queue(recorder, max_wait_s=0.5)
    first = queue.submit([1, 2], None, far())
    second = queue.submit([3], None, far())
    results = await asyncio.gather(first.future, second.future)
    assert recorder.calls == [([1, 2, 3], None)]
    assert results[0].batches == results[1].batches == 1
    assert results[0].images.shape == (2, 2, 2, 1)
    queue.close(5)


async def test_a_large_job_spans_batches_in_seed_order():
    recorder = Recorder()
    queue = make_queue(recorder)
    job = queue.submit(list(range(100, 110)), None, far())
    result = await job.future
    assert [call[0] for call in recorder.calls] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]
    assert result.batches == 3
    assert pixel_seeds(result.images) == list(range(100, 110))
    queue.close(5)


async def test_batches_only_mix_jobs_with_the_same_steps():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder, max_batch_images=8)
    blocker = queue.submit([1], 5, far())
    await asyncio.to_thread(recorder.entered.wait, 5)
    jobs = [queue.submit([10], 5, far()), queue.submit([20], 9, far()), queue.submit([30], 5, far())]
    recorder.release.set()
    await asyncio.gather(blocker.future, *(j.future for j in jobs))
    assert recorder.calls == [([1], 5), ([10, 30], 5), ([20], 9)]
    queue.close(5)


async def test_cancelled_and_expired_jobs_never_reach_the_sampler():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder)
    blocker = queue.submit([1], None, far())
    await asyncio.to_thread(recorder.entered.wait, 5)
    gone = queue.submit([50, 51], None, far())
    expired = queue.submit([60], None, time.monotonic() + 0.05)
    kept = queue.submit([70], None, far())
    assert queue.queued_images == 4
    queue.cancel(gone)
    assert queue.queued_images == 2
    await asyncio.sleep(0.1)
    recorder.release.set()
    with pytest.raises(DeadlineExceededError):
        await expired.future
    await asyncio.gather(blocker.future, kept.future)
    assert [call[0] for call in recorder.calls] == [[1], [70]]
    assert not gone.future.done() and queue.queued_images == 0
    queue.close(5)


async def test_a_failing_batch_fails_its_jobs_and_the_worker_goes_on():
    recorder = Recorder(fail_on=13)
    queue = make_queue(recorder, max_batch_images=2)
    spanning = queue.submit([11, 12, 13, 14], None, far())  # the second batch fails
    with pytest.raises(BatchFailedError, match="ValueError: boom"):
        await spanning.future
    assert [call[0] for call in recorder.calls] == [[11, 12], [13, 14]]
    healthy = await queue.submit([7], None, far()).future
    assert pixel_seeds(healthy.images) == [7]
    queue.close(5)


async def test_queue_bound_and_retry_after_from_measured_throughput():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder, max_batch_images=2, max_queue_images=4, default_steps=2)
    queue.record_throughput(work=10, seconds=1.0)  # 10 image-steps/s = 5 images/s
    running = queue.submit([1, 2], None, far())
    await asyncio.to_thread(recorder.entered.wait, 5)
    waiting = queue.submit([3, 4, 5, 6], None, far())
    with pytest.raises(QueueFullError) as raised:
        queue.submit([7], None, far())
    # To fit 1 more image, the running batch (4 image-steps) and 1 queued image (2) must drain: 6 / 10 per s.
    assert raised.value.queued_images == 4
    assert raised.value.retry_after_s == max(1, math.ceil((4 + 4 * 2 - (4 - 1) * 2) / 10))
    with pytest.raises(QueueFullError) as big:
        queue.submit([8, 9, 10, 11], None, far())
    assert big.value.retry_after_s == math.ceil((4 + 8 - 0) / 10)
    recorder.release.set()
    await asyncio.gather(running.future, waiting.future)
    queue.close(5)


async def test_close_finishes_queued_work_then_refuses():
    recorder = Recorder()
    recorder.release.clear()
    queue = make_queue(recorder)
    first = queue.submit([1], None, far())
    await asyncio.to_thread(recorder.entered.wait, 5)
    second = queue.submit([2], None, far())
    closing = asyncio.create_task(asyncio.to_thread(queue.close, 5))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueClosedError):
        queue.submit([3], None, far())
    recorder.release.set()
    await closing
    assert pixel_seeds((await first.future).images) == [1]
    assert pixel_seeds((await second.future).images) == [2]
