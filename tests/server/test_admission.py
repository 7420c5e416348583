"""Work-weighted admission and priorities through the app: the queue bound counts images x steps, the 503 says
so, `priority` (or the API key's) orders batches. Samplers are gated so queue states are exact."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import Gate, error_of, make_app, wrapping_loader, write_registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

GATED = 1000


def post(client: httpx.AsyncClient, headers: dict[str, str] | None = None, **body) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post("/generate", json={"dataset": "mnist", **body}, headers=headers))


async def model(client: httpx.AsyncClient, sampler: str) -> dict:
    models = (await client.get("/v1/models")).json()["models"]
    return next(m for m in models if m["dataset"] == "mnist" and m["sampler"] == sampler)


async def until(client: httpx.AsyncClient, sampler: str, field: str, value: float) -> None:
    while (await model(client, sampler))[field] != value:
        await asyncio.sleep(0.01)


async def test_the_ddpm_queue_admits_by_images_times_steps(tiny_models, started):
    gate = Gate()
    load, samplers = wrapping_loader(ddpm={"gate": gate})
    registry = write_registry(
        tiny_models, ddpm={"max_batch_images": 1, "max_wait_ms": 0, "max_queue_images": 32, "max_queue_work": 40}
    )
    client = await started(make_app(registry, load))
    described = await model(client, "ddpm")
    assert (described["max_queue_work"], described["queued_work"], described["workers"]) == (40, 0, ["cpu"])
    running = post(client, sampler="ddpm", seed=GATED, steps=4)
    await asyncio.to_thread(gate.wait_entered)
    heavy = post(client, sampler="ddpm", seed=2000, steps=40)  # one image, but the whole work bound
    await until(client, "ddpm", "queued_work", 40)
    refused = await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm", "steps": 1})
    assert refused.status_code == 503 and error_of(refused)["type"] == "overloaded"
    assert "1 images queued (limit 32), 40 image-steps (limit 40)" in error_of(refused)["message"]
    assert int(refused.headers["retry-after"]) >= 1
    too_big = await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm", "n": 2, "steps": 25})
    assert too_big.status_code == 400 and "50 image-steps exceeds" in error_of(too_big)["message"]
    assert (await client.post("/generate", json={"dataset": "mnist", "n": 4})).status_code == 200  # own queue
    gate.release.set()
    assert (await running).status_code == 200 and (await heavy).status_code == 200
    assert samplers["ddpm"].calls[-2:] == [[GATED], [2000]]
    metrics = (await client.get("/metrics")).text
    assert 'ddgan_queued_work_image_steps{model="mnist",sampler="ddpm"} 0.0' in metrics
    assert 'ddgan_dropped_work_image_steps_total{model="mnist",reason="cancelled",sampler="ddpm"} 0.0' in metrics
    assert 'ddgan_images_generated_total{device="cpu",model="mnist",sampler="ddpm"} 2.0' in metrics


async def test_priority_from_the_body_capped_by_the_api_key(tiny_models, started):
    gate = Gate()
    load, samplers = wrapping_loader(ddgan={"gate": gate})
    registry = write_registry(tiny_models, ddgan={"max_batch_images": 1, "max_wait_ms": 0, "aging_ms": 60_000})
    app = make_app(registry, load, api_key="main-key", key_priorities={"bulk-key": "batch"})
    client = await started(app)
    main, bulk = {"authorization": "Bearer main-key"}, {"authorization": "Bearer bulk-key"}
    client.headers.update(main)  # /v1/models too
    blocker = post(client, main, seed=GATED)
    await asyncio.to_thread(gate.wait_entered)
    # Queued while the worker is busy: two batch-class requests first, then an interactive one.
    by_key = post(client, bulk, seed=30, priority="interactive")  # the key caps it at batch
    await until(client, "ddgan", "queued_images", 1)
    by_body = post(client, main, seed=40, priority="batch")
    await until(client, "ddgan", "queued_images", 2)
    interactive = post(client, main, seed=50)
    await until(client, "ddgan", "queued_images", 3)
    gate.release.set()
    responses = [await task for task in (blocker, by_key, by_body, interactive)]
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.headers["x-priority"] for r in responses] == ["interactive", "batch", "batch", "interactive"]
    assert samplers["ddgan"].calls[-3:] == [[50], [30], [40]]  # interactive first, then batch in arrival order
    wrong = await client.post("/generate", json={"dataset": "mnist", "priority": "urgent"}, headers=main)
    assert wrong.status_code == 422
    unknown = await client.post("/generate", json={"dataset": "mnist"}, headers={"authorization": "Bearer nope"})
    assert unknown.status_code == 401
