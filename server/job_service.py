"""Running async jobs: a validated /generate body becomes a `Job` whose images are generated in the background.

`submit` checks the body exactly as /generate does (`GenerationService.admit`: same 404/422/503 answers), then a
task queues the images on the model's batch queue with the job's progress sink. A full model queue makes a job
wait (it stays `queued`) instead of answering 503: waiting is what a job is for. `cancel` drops what no batch has
taken; a running batch whose every ticket was given up stops at its next denoising step (`server.work`).
Results are encoded on request by the same code as /generate (`GenerationService.render`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator

from ddgan.server.batching import BatchFailedError, DeadlineExceededError, QueueClosedError, QueueFullError
from ddgan.server.engine import ClientGoneError
from ddgan.server.errors import APIError
from ddgan.server.job_schemas import JobError, JobProgress, JobStatus, JobTimings
from ddgan.server.jobs import Job, JobFailure, JobProgressSink, JobResult, JobsFullError, JobState, JobStore
from ddgan.server.schemas import GenerateRequest
from ddgan.server.serving import Admitted, GenerationService, Rendered, invalid
from ddgan.server.settings import ServerSettings

logger = logging.getLogger(__name__)

FULL_RETRY_AFTER_S = 5  # no rate to estimate from: jobs finish at the pace of whatever they hold
QUEUE_FULL_POLL_S = 1.0  # how often a job waiting for room in its model's queue tries again
SSE_MIN_INTERVAL_S = 0.05  # coalesce a burst of per-step progress into one event
WAIT_CHANGED_S = 60.0  # an events stream re-checks its job this often even without a change


def owner_of(api_key: str | None) -> str | None:
    """A job's owner is the digest of the key that made it (the key itself is never kept)."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else None


def status_of(job: Job) -> JobStatus:
    images_done, steps_done = job.counts()
    result = job.result.generated if job.result else None
    failure = job.failure
    return JobStatus(
        id=job.id,
        state=job.state.value,
        model=job.body.dataset,
        sampler=job.body.sampler,
        n=len(job.seeds),
        seed=job.seed,
        steps=job.steps,
        progress=JobProgress(
            images_done=images_done,
            images_total=len(job.seeds),
            steps_done=steps_done,
            steps_total=job.steps_total,
            fraction=round(steps_done / job.steps_total, 4),
        ),
        timings=JobTimings(
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            expires_at=job.expires_at,
            queue_ms=round(result.queue_s * 1000, 3) if result else None,
            inference_ms=round(result.inference_s * 1000, 3) if result else None,
        ),
        error=JobError(type=failure.type, message=failure.message, status=failure.status) if failure else None,
        result_url=f"/v1/jobs/{job.id}/result" if job.state is JobState.SUCCEEDED else None,
    )


class JobService:
    def __init__(self, generation: GenerationService, store: JobStore, settings: ServerSettings) -> None:
        self.generation = generation
        self.store = store
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, body: GenerateRequest, owner: str | None) -> Job:
        admitted = self.generation.admit(body)
        channels, height, width = admitted.info.image_shape
        nbytes = len(admitted.seeds) * channels * height * width
        if nbytes > self.store.max_bytes:
            raise invalid("body.n", f"{body.n} images need {nbytes} bytes, over the job result budget "
                                    f"({self.store.max_bytes} bytes, DDGAN_JOBS_MAX_BYTES)")  # fmt: skip
        try:
            job = self.store.create(owner, body, admitted.seeds, admitted.steps, admitted.seed)
        except JobsFullError as exc:
            raise APIError(
                503, "jobs_full", f"{exc}; retry in {FULL_RETRY_AFTER_S} s",
                headers={"Retry-After": str(FULL_RETRY_AFTER_S)},
            ) from None  # fmt: skip
        job.progress = JobProgressSink(job, asyncio.get_running_loop(), self.store.started)
        task = asyncio.create_task(self._run(job, admitted), name=f"job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def cancel(self, job: Job) -> None:
        """Cancel a live job (its queued images are dropped); a finished job is forgotten with its result."""
        if job.state.terminal:
            self.store.discard(job)
            return
        self.store.finish(job, JobState.CANCELLED)
        job.cancel_requested.set()

    async def result(self, job: Job, media_type: str, request_id: str) -> Rendered:
        if job.state is not JobState.SUCCEEDED or job.result is None or job.finished_at is None:
            if job.state.terminal:
                reason = f": {job.failure.message}" if job.failure else ""
                raise APIError(409, f"job_{job.state.value}", f"job {job.id} {job.state.value}{reason}; no result")
            raise APIError(
                409, "job_not_finished", f"job {job.id} is {job.state.value}; its result is not ready yet",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        result = job.result
        # latency_ms.total of a job's result: accepted -> finished, plus this encoding.
        started = time.perf_counter() - (job.finished_at - job.created_at)
        return await self.generation.render(
            job.body, result.info, media_type, request_id, job.seeds, job.steps, job.seed, result.generated, started
        )

    async def events(self, job: Job) -> AsyncIterator[tuple[int, JobStatus]]:
        """(version, status) on every change, ending with the terminal state's (the route makes them SSE)."""
        seen = -1
        while True:
            if job.version != seen:
                seen = job.version
                yield seen, status_of(job)
                if job.state.terminal:
                    return
                await asyncio.sleep(SSE_MIN_INTERVAL_S)
            else:
                await job.wait_changed(seen, WAIT_CHANGED_S)

    async def stop(self, timeout_s: float) -> None:
        """After the engine stopped (its queues failed what they could not finish): let the jobs record it."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()

    async def _run(self, job: Job, admitted: Admitted) -> None:
        deadline = time.monotonic() + self.settings.jobs_timeout_s
        model = admitted.model
        while True:
            try:
                generated = await model.generate(
                    job.seeds, job.steps, deadline, job.cancel_requested.wait, job.progress
                )
            except QueueFullError:
                if time.monotonic() + QUEUE_FULL_POLL_S > deadline:
                    self._fail(job, 504, "deadline_exceeded", "the model's queue never had room for the job")
                    return
                try:
                    await asyncio.wait_for(job.cancel_requested.wait(), QUEUE_FULL_POLL_S)
                    return  # cancelled while waiting for room
                except TimeoutError:
                    # A hot reload may have swapped the model meanwhile: queue on the one serving now.
                    model = self.generation.engine.lookup(job.body.dataset, job.body.sampler) or model
                    continue
            except ClientGoneError:
                return  # cancelled: `cancel` already recorded it
            except QueueClosedError:
                self._fail(job, 503, "shutting_down", "the server shut down before the job ran")
            except DeadlineExceededError:
                self._fail(job, 504, "deadline_exceeded", f"not done within {self.settings.jobs_timeout_s:.3g} s")
            except BatchFailedError as exc:
                self._fail(job, 500, "generation_failed", f"a batch holding this job's images failed: {exc}")
            except Exception as exc:  # a bug: the job fails, the server carries on
                logger.exception("job %s failed", job.id)
                self._fail(job, 500, "internal_error", f"{type(exc).__name__}: {exc}")
            else:
                self.store.finish(job, JobState.SUCCEEDED, result=JobResult(admitted.info, generated))
            return

    def _fail(self, job: Job, status: int, type: str, message: str) -> None:
        self.store.finish(job, JobState.FAILED, failure=JobFailure(status, type, message))
