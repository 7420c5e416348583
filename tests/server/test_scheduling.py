"""Queues under pressure: 503 + Retry-After, 504 deadlines, independent per-model queues, failing batches,
graceful shutdown. Samplers are gated (blocked until released) so queue states are exact, with no sleeps."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import Gate, error_of, make_app, serving, wrapping_loader, write_registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

GATED = 1000  # seeds >= this block in the gated sampler


def post(client: httpx.AsyncClient, **body) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post("/generate", json={"dataset": "mnist", **body}))


async def test_overload_answers_503_with_retry_after(tiny_models, started):
    gate = Gate()
    load, samplers = wrapping_loader(ddgan={"gate": gate})
    registry = write_registry(tiny_models, ddgan={"max_batch_images": 2, "max_wait_ms": 0, "max_queue_images": 4})
    client = await started(make_app(registry, load))
    running = post(client, n=2, seed=GATED)
    await asyncio.to_thread(gate.wait_entered)
    queued = post(client, n=4, seed=2000)
    while (await client.get("/v1/models")).json()["models"][0]["queued_images"] < 4:
        await asyncio.sleep(0.01)
    rejected = await client.post("/generate", json={"dataset": "mnist", "n": 1})
    assert rejected.status_code == 503 and error_of(rejected)["type"] == "overloaded"
    retry_after = int(rejected.headers["retry-after"])
    assert retry_after >= 1
    assert "4 images queued (limit 4)" in error_of(rejected)["message"]
    # The other model's queue is not affected.
    assert (await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm"})).status_code == 200
    gate.release.set()
    assert (await running).status_code == 200 and (await queued).status_code == 200
    assert samplers["ddgan"].calls[-3:] == [[GATED, GATED + 1], [2000, 2001], [2002, 2003]]
    metrics = (await client.get("/metrics")).text
    assert 'ddgan_requests_total{model="mnist",sampler="ddgan",status="503"} 1.0' in metrics


async def test_deadline_answers_504_and_drops_the_queued_work(tiny_models, started):
    gate = Gate()
    load, samplers = wrapping_loader(ddgan={"gate": gate})
    registry = write_registry(tiny_models, ddgan={"max_batch_images": 2, "max_wait_ms": 0})
    client = await started(make_app(registry, load))
    running = post(client, n=1, seed=GATED, timeout_s=0.3)  # its batch is running when the deadline passes
    await asyncio.to_thread(gate.wait_entered)
    waiting = await client.post("/generate", json={"dataset": "mnist", "n": 3, "seed": 3000, "timeout_s": 0.2})
    assert waiting.status_code == 504 and error_of(waiting)["type"] == "deadline_exceeded"
    late = await running
    assert late.status_code == 504
    gate.release.set()
    after = await client.post("/generate", json={"dataset": "mnist", "n": 1, "seed": 5})
    assert after.status_code == 200
    # The timed-out request's images never reached the sampler; the next request ran right after the gate.
    assert all(seed < 3000 or seed >= 3003 for call in samplers["ddgan"].calls for seed in call)
    assert samplers["ddgan"].calls[-1] == [5]
    models = (await client.get("/v1/models")).json()["models"]
    assert models[0]["queued_images"] == 0


async def test_a_long_ddpm_request_does_not_delay_ddgan(tiny_models, started):
    gate = Gate()
    load, _ = wrapping_loader(ddpm={"gate": gate})
    client = await started(make_app(write_registry(tiny_models), load))
    ddpm = post(client, sampler="ddpm", n=2, seed=GATED)
    await asyncio.to_thread(gate.wait_entered)
    for seed in range(3):  # DDGAN keeps serving while the DDPM worker is busy
        response = await client.post("/generate", json={"dataset": "mnist", "n": 2, "seed": seed})
        assert response.status_code == 200
    assert not ddpm.done()
    gate.release.set()
    assert (await ddpm).status_code == 200


async def test_a_failing_batch_fails_only_its_requests(tiny_models, started, caplog):
    gate = Gate()
    load, samplers = wrapping_loader(ddgan={"gate": gate, "poison_seed": 666})
    registry = write_registry(tiny_models, ddgan={"max_batch_images": 8, "max_wait_ms": 0})
    client = await started(make_app(registry, load))
    blocker = post(client, n=1, seed=GATED)
    await asyncio.to_thread(gate.wait_entered)
    poisoned = post(client, n=8, seed=660)  # one full batch, holding seed 666
    while (await client.get("/v1/models")).json()["models"][0]["queued_images"] < 8:
        await asyncio.sleep(0.01)
    healthy = post(client, n=2, seed=10)  # the next batch
    while (await client.get("/v1/models")).json()["models"][0]["queued_images"] < 10:
        await asyncio.sleep(0.01)
    gate.release.set()
    failed, ok = await poisoned, await healthy
    assert failed.status_code == 500
    error = error_of(failed)
    assert error["type"] == "generation_failed" and "poisoned" not in error["message"]  # exception text: log only
    assert "request id" in error["message"]
    assert f"request {error['request_id']}: the batch holding it failed: RuntimeError: poisoned seed 666" in caplog.text
    assert ok.status_code == 200 and ok.json()["seeds"] == [10, 11]
    assert (await blocker).status_code == 200
    assert samplers["ddgan"].calls[-2:] == [list(range(660, 668)), [10, 11]]
    again = await client.post("/generate", json={"dataset": "mnist", "n": 1, "seed": 1})
    assert again.status_code == 200  # the worker survived
    metrics = (await client.get("/metrics")).text
    assert 'ddgan_requests_total{model="mnist",sampler="ddgan",status="500"} 1.0' in metrics


async def test_graceful_shutdown_finishes_in_flight_work_and_refuses_new(tiny_models):
    gate = Gate()
    load, _ = wrapping_loader(ddgan={"gate": gate})
    app = make_app(write_registry(tiny_models), load)
    async with serving(app) as client:
        in_flight = post(client, n=2, seed=GATED)
        await asyncio.to_thread(gate.wait_entered)
        stopping = asyncio.create_task(app.state.engine.stop())
        await asyncio.sleep(0.05)
        refused = await client.post("/generate", json={"dataset": "mnist"})
        assert refused.status_code == 503 and error_of(refused)["type"] == "shutting_down"
        assert (await client.get("/readyz")).status_code == 503
        assert not stopping.done()  # waiting for the gated batch
        gate.release.set()
        response = await in_flight
        assert response.status_code == 200 and len(response.json()["images"]) == 2
        await stopping
