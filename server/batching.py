"""Dynamic batching: one queue and one worker thread per served model.

Requests become `Job`s (a list of per-image seeds). The worker coalesces queued images into a batch of up to
`max_batch_images`, waiting at most `max_wait_s` after the oldest job arrived; a job larger than a batch spans
several. Inference runs on the worker thread, so the event loop never blocks, and one model runs one batch at a
time. Results go back to each job's asyncio future; a batch that raises fails only the jobs in it, and the
worker carries on. Because every image draws its noise from its own seed, batching never changes an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import Tensor

from ddgan.model.images import to_uint8

logger = logging.getLogger(__name__)

# (seeds, steps) -> images (B, C, H, W) in [-1, 1]; steps is None for a sampler with a fixed step count.
RunBatch = Callable[[list[int], int | None], Tensor]


class QueueFullError(Exception):
    def __init__(self, queued_images: int, retry_after_s: int) -> None:
        super().__init__(f"{queued_images} images already queued")
        self.queued_images = queued_images
        self.retry_after_s = retry_after_s


class QueueClosedError(Exception):
    """The server is shutting down and takes no new work."""


class DeadlineExceededError(Exception):
    """The job's deadline passed before its images were generated."""


class BatchFailedError(Exception):
    """The sampler raised while running a batch that held this job's images."""


class BatchObserver(Protocol):
    def batch_done(self, images: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queued(self, images: int) -> None: ...


@dataclass(frozen=True)
class JobResult:
    images: np.ndarray  # (n, H, W, C) uint8, in seed order
    queue_s: float  # enqueue -> first batch starts
    inference_s: float  # sampler time of the batches holding this job's images
    batches: int


@dataclass(eq=False)
class Job:
    seeds: list[int]
    steps: int | None
    deadline: float  # time.monotonic()
    future: asyncio.Future[JobResult]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.monotonic)
    next_index: int = 0  # first image not yet given to a batch
    done: int = 0
    images: np.ndarray | None = None
    started_at: float | None = None
    inference_s: float = 0.0
    batches: int = 0
    finished: bool = False

    @property
    def remaining(self) -> int:
        return len(self.seeds) - self.next_index


def _resolve(future: asyncio.Future[JobResult], result: JobResult | None, error: BaseException | None) -> None:
    if future.done():  # the handler gave up (deadline, disconnect)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class BatchQueue:
    """The queue and worker thread of one model."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_images: int,
        max_wait_s: float,
        max_queue_images: int,
        default_steps: int,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.max_batch_images = max_batch_images
        self.max_wait_s = max_wait_s
        self.max_queue_images = max_queue_images
        self.default_steps = default_steps
        self.observer = observer
        self._pending: deque[Job] = deque()
        self._queued_images = 0
        self._running_work = 0.0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Work = images x steps; the rate is an exponential average over recent batches (warm-up seeds it).
        self._work_per_s: float | None = None

    # ----- event-loop side -----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name=f"batch-{self.name}", daemon=True)
        self._thread.start()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def submit(self, seeds: list[int], steps: int | None, deadline: float) -> Job:
        """Queue a job (call from the event loop); raises QueueFullError or QueueClosedError."""
        loop = asyncio.get_running_loop()
        job = Job(list(seeds), steps, deadline, loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise QueueClosedError(f"{self.name} is shutting down")
            if self._queued_images + len(seeds) > self.max_queue_images:
                raise QueueFullError(self._queued_images, self._retry_after_locked(len(seeds), steps))
            self._pending.append(job)
            self._set_queued(self._queued_images + len(seeds))
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop what is left of a job (client gone or handler timed out); a running batch still completes."""
        with self._cond:
            if job.finished:
                return
            job.finished = True
            self._remove_locked(job)

    def retry_after_s(self, images: int, steps: int | None) -> int:
        with self._cond:
            return self._retry_after_locked(images, steps)

    def record_throughput(self, work: float, seconds: float) -> None:
        """Feed the rate estimate (images x steps per second) used for Retry-After."""
        if seconds <= 0:
            return
        rate = work / seconds
        with self._cond:
            self._work_per_s = rate if self._work_per_s is None else 0.7 * self._work_per_s + 0.3 * rate

    def close(self, timeout_s: float) -> None:
        """Stop taking jobs, finish the queued ones within `timeout_s`, then fail what is left."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            for job in list(self._pending):
                self._fail_locked(job, QueueClosedError("server shut down before this request ran"))

    # ----- worker side -----
    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(*batch)

    def _next_batch(self) -> tuple[list[tuple[Job, int, int]], int | None] | None:
        with self._cond:
            while True:
                self._drop_expired_locked()
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._pending[0]
                available = sum(j.remaining for j in self._pending if j.steps == head.steps)
                wait_s = head.enqueued_at + self.max_wait_s - time.monotonic()
                if available >= self.max_batch_images or wait_s <= 0 or self._closing:
                    break
                self._cond.wait(min(wait_s, max(head.deadline - time.monotonic(), 0.0)))
            steps = head.steps
            parts: list[tuple[Job, int, int]] = []
            room = self.max_batch_images
            for job in list(self._pending):
                if room == 0:
                    break
                if job.steps != steps:
                    continue
                count = min(room, job.remaining)
                parts.append((job, job.next_index, count))
                job.next_index += count
                room -= count
                if job.remaining == 0:
                    self._pending.remove(job)
            taken = self.max_batch_images - room
            self._set_queued(self._queued_images - taken)
            self._running_work = taken * (steps or self.default_steps)
            return parts, steps

    def _run(self, parts: list[tuple[Job, int, int]], steps: int | None) -> None:
        seeds = [seed for job, start, count in parts for seed in job.seeds[start : start + count]]
        started = time.monotonic()
        for job, _, _ in parts:
            if job.started_at is None:
                job.started_at = started
                if self.observer:
                    self.observer.queue_wait(started - job.enqueued_at)
        try:
            images = to_uint8(self.run_batch(seeds, steps))
            if images.shape[0] != len(seeds):
                raise RuntimeError(f"sampler returned {images.shape[0]} images for {len(seeds)} seeds")
        except Exception as exc:
            logger.exception("%s: batch of %d images failed", self.name, len(seeds))
            with self._cond:
                self._running_work = 0.0
                for job, _, _ in parts:
                    self._fail_locked(job, BatchFailedError(f"{type(exc).__name__}: {exc}"))
            return
        seconds = time.monotonic() - started
        self.record_throughput(len(seeds) * (steps or self.default_steps), seconds)
        if self.observer:
            self.observer.batch_done(len(seeds), seconds)
        offset = 0
        with self._cond:
            self._running_work = 0.0
            for job, start, count in parts:
                if job.images is None:
                    job.images = np.empty((len(job.seeds), *images.shape[1:]), dtype=images.dtype)
                job.images[start : start + count] = images[offset : offset + count]
                offset += count
                job.done += count
                job.inference_s += seconds
                job.batches += 1
                if job.done == len(job.seeds) and not job.finished:
                    job.finished = True
                    queue_s = (job.started_at or started) - job.enqueued_at
                    result = JobResult(job.images, queue_s, job.inference_s, job.batches)
                    self._notify(job, result, None)

    # ----- helpers (caller holds the lock) -----
    def _retry_after_locked(self, images: int, steps: int | None) -> int:
        if not self._work_per_s:
            return 1
        per_image = steps or self.default_steps
        queued = sum(j.remaining * (j.steps or self.default_steps) for j in self._pending)
        # Work that must drain before `images` more fit under the bound, at the measured rate.
        backlog = queued + self._running_work - (self.max_queue_images - images) * per_image
        return max(1, math.ceil(max(backlog, 0.0) / self._work_per_s))

    def _drop_expired_locked(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._pending if j.deadline <= now]:
            self._fail_locked(job, DeadlineExceededError("deadline passed while queued"))

    def _fail_locked(self, job: Job, error: BaseException) -> None:
        if job.finished:
            return
        job.finished = True
        self._remove_locked(job)
        self._notify(job, None, error)

    def _remove_locked(self, job: Job) -> None:
        if job in self._pending:
            self._pending.remove(job)
            self._set_queued(self._queued_images - job.remaining)
            job.next_index = len(job.seeds)

    def _set_queued(self, images: int) -> None:
        self._queued_images = images
        if self.observer:
            self.observer.queued(images)

    def _notify(self, job: Job, result: JobResult | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
            job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
