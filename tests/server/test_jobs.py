"""The async job store on its own (fake clock): TTL, owners, capacity, the result byte budget, progress counts;
and the batch hook that reports progress and stops a batch whose every ticket was given up."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from ddgan.model.sampling import SamplerInfo, SamplingStoppedError
from ddgan.server.app import create_app
from ddgan.server.batching import Slice, Ticket
from ddgan.server.engine import Generated
from ddgan.server.jobs import JobProgressSink, JobResult, JobsFullError, JobState, JobStore
from ddgan.server.metrics import ServerMetrics
from ddgan.server.registry import load_registry
from ddgan.server.schemas import GenerateRequest
from ddgan.server.settings import ServerSettings
from ddgan.server.work import ImageWork, run_image_batch
from tests.server.conftest import error_of, write_registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

INFO = SamplerInfo(
    kind="ddpm", dataset="mnist", image_shape=(1, 4, 4), default_steps=10, min_steps=1, max_steps=100,
    backend="torch", device="cpu", dtype="float32", micro_batch=None, random_weights=True, weights_digest="0" * 64,
)  # fmt: skip


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def metric(metrics: ServerMetrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def make_store(**kwargs) -> tuple[JobStore, FakeClock, ServerMetrics]:
    clock, metrics = FakeClock(), ServerMetrics()
    options = {"max_jobs": 4, "ttl_s": 60.0, "max_bytes": 10_000, **kwargs}
    return JobStore(metrics=metrics, clock=clock, **options), clock, metrics


def result_of(images: int) -> JobResult:
    return JobResult(INFO, Generated(np.zeros((images, 4, 4, 1), np.uint8), 0.0, 0.0, 1))


def new_job(store: JobStore, owner: str | None = "alice", n: int = 2):
    body = GenerateRequest(dataset="mnist", sampler="ddpm", n=n, seed=5)
    return store.create(owner, body, list(range(5, 5 + n)), 10, 5)


async def test_finished_jobs_expire_after_the_ttl():
    store, clock, metrics = make_store()
    job = new_job(store)
    clock.now += 3_600  # a live job never expires, however old
    assert store.get(job.id, "alice") is job
    store.finish(job, JobState.SUCCEEDED, result=result_of(2))
    assert job.expires_at == clock.now + 60
    clock.now += 59.9
    assert store.get(job.id, "alice") is job
    clock.now += 0.1
    assert store.get(job.id, "alice") is None
    assert metric(metrics, "ddgan_jobs_evicted_total", reason="expired") == 1
    assert metric(metrics, "ddgan_job_result_bytes") == 0


async def test_a_job_is_visible_to_its_owner_only():
    store, _, _ = make_store()
    keyed, open_job = new_job(store, "alice"), new_job(store, None)
    assert store.get(keyed.id, "bob") is None and store.get(keyed.id, None) is None
    assert store.get(open_job.id, None) is open_job and store.get(open_job.id, "alice") is None
    assert store.get("no-such-id", "alice") is None


async def test_capacity_takes_the_oldest_finished_job_then_refuses():
    store, _, metrics = make_store(max_jobs=2)
    first, second = new_job(store), new_job(store)
    with pytest.raises(JobsFullError):
        new_job(store)
    assert metric(metrics, "ddgan_jobs_rejected_total") == 1
    store.finish(second, JobState.CANCELLED)
    third = new_job(store)  # takes the place of the finished one, never of a live one
    assert store.get(second.id, "alice") is None and store.get(first.id, "alice") is first
    assert store.get(third.id, "alice") is third
    assert metric(metrics, "ddgan_jobs", state="queued") == 2
    assert metric(metrics, "ddgan_jobs_evicted_total", reason="capacity") == 1


async def test_result_budget_evicts_the_oldest_results():
    store, _, metrics = make_store(max_jobs=8, max_bytes=3 * 16 * 2)  # three results of two 4x4 images
    jobs = [new_job(store) for _ in range(4)]
    failed = new_job(store)
    store.finish(failed, JobState.FAILED)  # holds no bytes: never evicted for them
    for job in jobs:
        store.finish(job, JobState.SUCCEEDED, result=result_of(2))
    assert [store.get(job.id, "alice") for job in jobs] == [None, *jobs[1:]]
    assert store.get(failed.id, "alice") is failed
    assert store.result_bytes == metric(metrics, "ddgan_job_result_bytes") == 96
    assert metric(metrics, "ddgan_jobs_evicted_total", reason="bytes") == 1
    assert metric(metrics, "ddgan_jobs_finished_total", model="mnist", sampler="ddpm", state="succeeded") == 4


async def test_a_job_finishes_once_and_discard_forgets_it():
    store, _, metrics = make_store()
    job = new_job(store)
    store.finish(job, JobState.CANCELLED)
    store.finish(job, JobState.SUCCEEDED, result=result_of(2))  # the late result of a cancelled job
    assert job.state is JobState.CANCELLED and job.result is None
    store.discard(job)
    assert store.get(job.id, "alice") is None
    assert metric(metrics, "ddgan_jobs", state="cancelled") == 0


async def test_progress_counts_images_and_steps_from_worker_threads():
    store, _, _ = make_store()
    job = new_job(store, n=5)
    loop = asyncio.get_running_loop()
    job.progress = JobProgressSink(job, loop, store.started)

    def worker(images: int, steps: list[int], finish: bool) -> None:
        job.progress.batch_started(images)
        for done in steps:
            job.progress.steps_done(images, done)
        if finish:
            job.progress.images_done(images)

    # Two workers at once: one finished 2 images, the other holds 3 images at step 4 of 10.
    threads = [threading.Thread(target=worker, args=(2, [5, 10], True)),
               threading.Thread(target=worker, args=(3, [2, 4], False))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen = job.version
    await asyncio.sleep(0)  # the loop runs what the workers handed it
    assert job.state is JobState.RUNNING and job.started_at == store.clock()
    assert job.counts() == (2, 2 * 10 + 3 * 4) and job.steps_total == 50
    assert job.version > seen and await job.wait_changed(seen, 0.01)
    store.finish(job, JobState.SUCCEEDED, result=result_of(5))
    assert job.counts() == (5, 50)


class StepSampler:
    """Runs `steps` iterations of nothing, calling progress after each one (the DDPM's contract)."""

    def __init__(self, on_step=None) -> None:
        self.on_step = on_step
        self.iterations = 0

    def sample(self, seeds, steps=None, progress=None):
        total = max(steps)
        for k in range(total):
            self.iterations += 1
            if self.on_step:
                self.on_step(k)
            progress(k + 1, total)
        return torch.zeros(len(seeds), 1, 4, 4)


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def batch_started(self, images: int) -> None:
        self.events.append(("started", images, 0))

    def steps_done(self, images: int, steps: int) -> None:
        self.events.append(("steps", images, steps))

    def images_done(self, images: int) -> None:
        self.events.append(("done", images, 0))


def ticket(work: ImageWork) -> Ticket:
    loop = asyncio.get_running_loop()
    return Ticket(work, len(work.seeds), float(work.steps), 1e18, loop.create_future(), loop)


async def test_mixed_step_batch_reports_each_request_its_own_steps():
    short, long = Recorded(), Recorded()
    slices = [Slice(ticket(ImageWork([1, 2], 2, short)), 0, 2), Slice(ticket(ImageWork([3], 4, long)), 0, 1)]
    parts = run_image_batch(StepSampler(), slices)
    assert [part.shape[0] for part in parts] == [2, 1]
    assert short.events == [("started", 2, 0), ("steps", 2, 1), ("steps", 2, 2), ("steps", 2, 2), ("steps", 2, 2),
                            ("done", 2, 0)]  # fmt: skip
    assert long.events == [("started", 1, 0), *[("steps", 1, k) for k in range(1, 5)], ("done", 1, 0)]


async def test_batch_stops_at_the_next_step_once_every_ticket_is_given_up():
    first, second = ticket(ImageWork([1], 100)), ticket(ImageWork([2], 100))
    slices = [Slice(first, 0, 1), Slice(second, 0, 1)]

    def give_up(step: int) -> None:
        if step == 3:
            first.finished = True  # one ticket given up: the other still wants its image
        if step == 6:
            second.finished = True

    sampler = StepSampler(give_up)
    with pytest.raises(SamplingStoppedError):
        run_image_batch(sampler, slices)
    assert sampler.iterations == 7  # stopped right after the step during which the last ticket left


async def test_expiry_and_the_result_budget_through_the_app(tiny_models, started):
    clock = FakeClock()
    settings = ServerSettings(registry=write_registry(tiny_models), png_workers=2, jobs_ttl_s=30, jobs_max_bytes=300)
    client = await started(create_app(settings, registry=load_registry(settings.registry), job_clock=clock))
    too_big = await client.post("/v1/jobs", json={"dataset": "mnist", "n": 2})  # 2 x 16 x 16 bytes > 300
    assert too_big.status_code == 422 and "DDGAN_JOBS_MAX_BYTES" in error_of(too_big)["message"]
    job = (await client.post("/v1/jobs", json={"dataset": "mnist", "n": 1, "seed": 4})).json()
    while (status := (await client.get(f"/v1/jobs/{job['id']}")).json())["state"] != "succeeded":
        await asyncio.sleep(0.01)
    assert status["timings"]["expires_at"] == clock.now + 30
    clock.now += 29.9
    assert (await client.get(f"/v1/jobs/{job['id']}/result")).status_code == 200
    clock.now += 0.1
    expired = await client.get(f"/v1/jobs/{job['id']}/result")
    assert expired.status_code == 404 and error_of(expired)["type"] == "job_not_found"


async def test_jobs_routes_are_in_the_openapi_schema(client):
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths["/v1/jobs"]) == {"post"} and set(paths["/v1/jobs/{job_id}"]) == {"get", "delete"}
    status_ref = {"$ref": "#/components/schemas/JobStatus"}
    assert paths["/v1/jobs"]["post"]["responses"]["202"]["content"]["application/json"]["schema"] == status_ref
    assert paths["/v1/jobs/{job_id}"]["delete"]["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    result = paths["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "image/png", "application/zip"} <= set(result)
    assert "text/event-stream" in paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
