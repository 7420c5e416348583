"""The async job store: bounded, TTL-expiring records of `/v1/jobs` work, each owned by the key that made it.

A `Job` is one /generate body run in the background (`server.job_service` runs it). The store holds at most
`max_jobs` jobs: a new job first takes the place of the oldest finished one, and when every held job is still
queued or running it is refused (`JobsFullError`, answered 503). Finished results are kept `ttl_s` seconds, in
at most `max_bytes` of raw images: a result that would overflow the budget evicts the oldest finished results
first. Expired, evicted, unknown and other keys' jobs all look the same to a caller: absent (404).

Every time is the store's `clock` (Unix seconds; tests pass a fake one). State changes happen on the event loop;
the batch worker threads only report progress through `JobProgressSink`, which hands it to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ddgan.model.sampling import SamplerInfo
from ddgan.server.engine import Generated
from ddgan.server.metrics import ServerMetrics
from ddgan.server.schemas import GenerateRequest

Clock = Callable[[], float]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobsFullError(Exception):
    """Every held job is still queued or running: no room for another."""


@dataclass(frozen=True)
class JobFailure:
    status: int
    type: str
    message: str


@dataclass(frozen=True)
class JobResult:
    info: SamplerInfo
    generated: Generated

    @property
    def nbytes(self) -> int:
        return int(self.generated.images.nbytes)


@dataclass(eq=False)
class Job:
    id: str
    owner: str | None  # sha256 of the API key that made it (None: no key sent)
    body: GenerateRequest
    seeds: list[int]
    steps: int
    seed: int
    created_at: float
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    failure: JobFailure | None = None
    result: JobResult | None = None
    version: int = 0  # bumped on every change the events stream shows
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    progress: JobProgressSink | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def steps_total(self) -> int:
        return len(self.seeds) * self.steps

    def counts(self) -> tuple[int, int]:
        """(images done, denoising steps done over all images)."""
        if self.state is JobState.SUCCEEDED:
            return len(self.seeds), self.steps_total
        return self.progress.counts(self.steps) if self.progress else (0, 0)

    def touch(self) -> None:
        """Wake whoever waits for a change (event loop only)."""
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, seen: int, timeout_s: float) -> bool:
        """Until the version passes `seen` (True) or `timeout_s` passed (False)."""
        if self.version != seen:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.version != seen


class JobProgressSink:
    """A job's `server.work.WorkProgress`: counts from the worker threads, state changes handed to the loop.

    Batches are tracked per worker thread (each runs one batch at a time), so several workers of one model can
    hold images of the same job at once.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, on_started: Callable[[Job], None]) -> None:
        self.job = job
        self.loop = loop
        self.on_started = on_started
        self._lock = threading.Lock()
        self._done = 0
        self._running: dict[int, tuple[int, int]] = {}  # worker thread -> (images, steps each has done)

    def counts(self, steps: int) -> tuple[int, int]:
        with self._lock:
            running = sum(images * done for images, done in self._running.values())
            return self._done, self._done * steps + running

    def batch_started(self, images: int) -> None:
        with self._lock:
            self._running[threading.get_ident()] = (images, 0)
        self._call(self.on_started)

    def steps_done(self, images: int, steps: int) -> None:
        with self._lock:
            self._running[threading.get_ident()] = (images, steps)
        self._call(Job.touch)

    def images_done(self, images: int) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)
            self._done += images
        self._call(Job.touch)

    def _call(self, callback: Callable[[Job], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is gone, nobody is watching
            self.loop.call_soon_threadsafe(callback, self.job)


class JobStore:
    def __init__(self, *, max_jobs: int, ttl_s: float, max_bytes: int, metrics: ServerMetrics, clock: Clock) -> None:
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.clock = clock
        self._jobs: dict[str, Job] = {}  # in creation order: the first finished one is the oldest

    @property
    def result_bytes(self) -> int:
        return sum(job.result.nbytes for job in self._jobs.values() if job.result is not None)

    def create(self, owner: str | None, body: GenerateRequest, seeds: list[int], steps: int, seed: int) -> Job:
        self.purge()
        if len(self._jobs) >= self.max_jobs:
            oldest = next((job for job in self._jobs.values() if job.state.terminal), None)
            if oldest is None:
                self.metrics.job_rejected()
                raise JobsFullError(f"{len(self._jobs)} jobs are queued or running (limit {self.max_jobs})")
            self._evict(oldest, "capacity")
        job = Job(uuid.uuid4().hex, owner, body, seeds, steps, seed, created_at=self.clock())
        self._jobs[job.id] = job
        self.metrics.job_submitted(body.dataset, body.sampler)
        self._publish()
        return job

    def get(self, job_id: str, owner: str | None) -> Job | None:
        """The caller's job, or None: unknown, expired and other keys' jobs are indistinguishable."""
        self.purge()
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def started(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            job.state, job.started_at = JobState.RUNNING, self.clock()
            self._publish()
        job.touch()

    def finish(
        self, job: Job, state: JobState, *, result: JobResult | None = None, failure: JobFailure | None = None
    ) -> None:
        """Move a live job to a terminal state (a job finishes once: later calls are ignored)."""
        if job.state.terminal or job.id not in self._jobs:
            return
        now = self.clock()
        job.state, job.finished_at, job.expires_at = state, now, now + self.ttl_s
        job.result, job.failure = result, failure
        if result is not None:
            # Make room by dropping the oldest finished results (admission checked that one result fits).
            while self.result_bytes > self.max_bytes:
                oldest = next(j for j in self._jobs.values() if j.result is not None and j is not job)
                self._evict(oldest, "bytes")
        self.metrics.job_finished(job.body.dataset, job.body.sampler, state.value)
        self._publish()
        job.touch()

    def discard(self, job: Job) -> None:
        """Forget a finished job and its result (DELETE of a finished job)."""
        if self._jobs.pop(job.id, None) is not None:
            self._publish()

    def purge(self) -> None:
        now = self.clock()
        for job in [j for j in self._jobs.values() if j.expires_at is not None and j.expires_at <= now]:
            self._evict(job, "expired")

    def _evict(self, job: Job, reason: str) -> None:
        del self._jobs[job.id]
        self.metrics.job_evicted(reason)
        self._publish()

    def _publish(self) -> None:
        counts = {state.value: 0 for state in JobState}
        for job in self._jobs.values():
            counts[job.state.value] += 1
        self.metrics.set_jobs(counts, self.result_bytes)
