"""The client against scripted answers (httpx.MockTransport): retries, typed errors, jobs; sync and async."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import httpx
import pytest

from ddgan.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    ConnectionFailedError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    OverloadedError,
    RetryPolicy,
    ServerError,
    UnavailableError,
)
from ddgan.client.protocol import EventParser
from tests.client.fake_server import PNG, FakeJobs, answers, error, generation

OK = httpx.Response(200, json=generation(7, 2))


def client_for(handler, **kwargs) -> tuple[Client, list[float]]:
    slept: list[float] = []
    client = Client(
        "http://fake", transport=httpx.MockTransport(handler), sleep=slept.append, rng=random.Random(0), **kwargs
    )
    return client, slept


def test_503_is_retried_after_retry_after_with_bounded_jitter():
    busy = error(503, "overloaded", "queue full", headers={"retry-after": "2"})
    handler = answers(busy, busy, OK)
    client, slept = client_for(handler)
    result = client.generate("mnist", n=2, seed=7)
    assert result.seeds == [7, 8] and result.images[0] == PNG + b"\x00"
    assert len(handler.calls) == 3 and len(slept) == 2
    assert all(2.0 <= s <= 2.0 * 1.25 for s in slept) and slept[0] != slept[1]  # jittered, never early


def test_retries_stop_after_the_attempts_and_raise_the_typed_error():
    handler = answers(error(503, "overloaded", "queue full", headers={"retry-after": "1"}))
    client, slept = client_for(handler, retry=RetryPolicy(attempts=3))
    with pytest.raises(OverloadedError) as raised:
        client.generate("mnist")
    assert len(handler.calls) == 3 and len(slept) == 2
    exc = raised.value
    assert (exc.status, exc.type, exc.message, exc.request_id, exc.retry_after_s) == (
        503, "overloaded", "queue full", "req-1", 1.0,
    )  # fmt: skip
    assert isinstance(exc, UnavailableError)


def test_backoff_without_retry_after_and_no_wait_beyond_the_bound():
    handler = answers(error(503, "model_unavailable", "warming up"))
    client, slept = client_for(handler, retry=RetryPolicy(attempts=4, backoff_s=0.5, jitter=0.25))
    with pytest.raises(UnavailableError):
        client.generate("mnist")
    assert len(slept) == 3  # 4 attempts
    for seconds, base in zip(slept, (0.5, 1.0, 2.0), strict=True):
        assert base <= seconds <= base * 1.25
    far = answers(error(503, "overloaded", "full", headers={"retry-after": "600"}), OK)
    client, slept = client_for(far, retry=RetryPolicy(max_wait_s=30))
    with pytest.raises(OverloadedError):
        client.generate("mnist")
    assert slept == [] and len(far.calls) == 1  # 600 s is past max_wait_s: raised at once, not slept


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    client, slept = client_for(answers(error(503, "overloaded", "full", headers={"retry-after": when}), OK))
    client.generate("mnist")
    assert len(slept) == 1 and 1.0 <= slept[0] <= 4 * 1.25


def test_error_answers_become_typed_errors_and_are_not_retried():
    cases = [
        (error(404, "model_not_installed", "run: ddgan convert ..."), NotFoundError),
        (error(401, "unauthorized", "missing or wrong API key"), AuthenticationError),
        (error(409, "job_not_finished", "not done"), ConflictError),
        (error(500, "generation_failed", "the batch failed"), ServerError),
        (httpx.Response(502, text="<html>bad gateway</html>"), ServerError),  # a proxy's, not our shape
    ]
    for response, kind in cases:
        handler = answers(response)
        client, slept = client_for(handler)
        with pytest.raises(kind) as raised:
            client.generate("mnist")
        assert raised.value.status == response.status_code and len(handler.calls) == 1 and slept == []
    invalid = error(422, "invalid_request", "body.n: too many", details=[{"field": "body.n", "message": "too many",
                                                                         "type": "value_error"}])  # fmt: skip
    client, _ = client_for(answers(invalid))
    with pytest.raises(InvalidRequestError) as raised:
        client.generate("mnist", n=10_000)
    assert raised.value.details[0]["field"] == "body.n" and "body.n: too many" in str(raised.value)
    client, _ = client_for(answers(httpx.Response(502, text="bad gateway")))
    with pytest.raises(ServerError, match="bad gateway"):
        client.generate("mnist")


def test_unreachable_server():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, _ = client_for(refuse)
    with pytest.raises(ConnectionFailedError, match="connection refused"):
        client.models()


def test_request_bodies_and_auth_header():
    handler = answers(OK)
    client, _ = client_for(handler, api_key="sesame")
    client.generate("mnist", n=2, seed=7, sampler="ddpm", steps=50)
    request = handler.calls[0]
    assert request.headers["authorization"] == "Bearer sesame"
    assert request.read() == b'{"dataset":"mnist","n":2,"sampler":"ddpm","seed":7,"steps":50}'
    image = answers(httpx.Response(200, content=PNG, headers={"etag": '"abc"', "x-steps": "50", "x-cache": "hit"}))
    client, _ = client_for(image)
    got = client.image("mnist", 9, sampler="ddpm", steps=50)
    assert (got.png, got.etag, got.steps, got.cache) == (PNG, '"abc"', 50, "hit")
    assert str(image.calls[0].url) == "http://fake/v1/images/mnist/ddpm/9.png?steps=50"


def test_jobs_submit_wait_with_progress_and_result():
    jobs = FakeJobs()
    client, _ = client_for(jobs.handle)
    job = client.jobs.submit("mnist", n=2, sampler="ddpm", steps=2)
    assert (job.id, job.state, job.progress.steps_total) == ("j1", "queued", 4)
    updates = []
    done = client.jobs.wait(job, progress=updates.append)
    assert [(u.state, u.progress.steps_done) for u in updates] == [
        ("queued", 0), ("running", 2), ("running", 3), ("succeeded", 4),
    ]  # fmt: skip
    assert done.state == "succeeded" and done.result_url == "/v1/jobs/j1/result"
    assert "GET /v1/jobs/j1/events" in jobs.seen and "GET /v1/jobs/j1" not in jobs.seen  # followed the stream
    result = client.jobs.result("j1")
    assert result.sampler == "ddpm" and result.seeds == [7, 8] and len(result.images) == 2


def test_jobs_wait_polls_without_an_event_stream():
    jobs = FakeJobs(events=False)
    client, slept = client_for(jobs.handle)
    updates = []
    assert client.jobs.wait("j1", progress=updates.append, poll_s=0.25).state == "succeeded"
    assert [u.progress.steps_done for u in updates] == [0, 2, 3, 4] and slept == [0.25] * 3


def test_a_failed_or_cancelled_job_raises_and_cancel_reports_it():
    failing = FakeJobs(script=[("running", 1), ("failed", 1)])
    client, _ = client_for(failing.handle)
    with pytest.raises(JobFailedError, match="generation_failed: boom") as raised:
        client.jobs.wait("j1")
    assert raised.value.job.state == "failed"
    jobs = FakeJobs()
    client, _ = client_for(jobs.handle)
    assert client.jobs.cancel("j1").state == "cancelled"
    with pytest.raises(JobFailedError, match="cancelled"):
        client.jobs.wait("j1")
    with pytest.raises(ConflictError):
        client.jobs.result("j1")
    with pytest.raises(NotFoundError) as unknown:
        client.jobs.wait("nope")
    assert unknown.value.type == "job_not_found"


def test_event_parser_follows_the_sse_format():
    parser = EventParser()
    lines = [": comment", "event: job", 'data: {"a":', "data: 1}", "id: 3", "", "data: plain", "", ""]
    events = [event for line in lines for event in parser.feed(line)]
    assert events == [("job", '{"a":\n1}'), ("message", "plain")]


def test_async_client_retries_and_follows_jobs():
    async def scenario() -> None:
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        busy = error(503, "overloaded", "queue full", headers={"retry-after": "1"})
        transport = httpx.MockTransport(answers(busy, OK))
        async with AsyncClient("http://fake", transport=transport, sleep=sleep) as client:
            assert (await client.generate("mnist", n=2, seed=7)).seeds == [7, 8]
        assert len(slept) == 1 and 1.0 <= slept[0] <= 1.25

        jobs = FakeJobs()
        seen: list[int] = []

        async def progress(job) -> None:  # a coroutine callback is awaited
            seen.append(job.progress.steps_done)

        async with AsyncClient("http://fake", transport=httpx.MockTransport(jobs.handle), sleep=sleep) as client:
            job = await client.jobs.submit("mnist", n=2, sampler="ddpm")
            assert (await client.jobs.wait(job, progress=progress)).state == "succeeded"
            assert seen == [0, 2, 3, 4]
            assert len((await client.jobs.result(job.id)).images) == 2
            polled = FakeJobs(events=False, script=[("running", 1), ("failed", 1)])
        async with AsyncClient("http://fake", transport=httpx.MockTransport(polled.handle), sleep=sleep) as client:
            with pytest.raises(JobFailedError):
                await client.jobs.wait("j1", progress=lambda job: None)

    asyncio.run(scenario())
