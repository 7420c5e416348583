"""The Ray engine's application in Serve's local testing mode: every deployment (ingress, metrics hub, model
replica) runs in this process, so the wiring is checked in seconds without a cluster: the ingress answers the
native API through RayEngine, the replica runs our Runtime and gives the native server's bytes, and /metrics
merges the replicas' series under a replica label. (The real cluster: test_rayserve.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import make_app, serving
from tests.server.test_rayserve import write_registry

serve = pytest.importorskip("ray.serve", reason="needs the ray extra (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow

Call = Callable[[Callable[[httpx.AsyncClient], Awaitable[Any]]], Any]


def ingress_app(handle: Any) -> tuple[Any, asyncio.AbstractEventLoop]:
    """The ASGI app and event loop of a local-testing-mode ingress (Serve keeps them in its in-process wrapper)."""
    cells = [cell.cell_contents for cell in handle._create_router.__closure__ or ()]
    wrapper = next((c for c in cells if type(c).__name__ == "UserCallableWrapper"), None)
    if wrapper is None:
        pytest.fail("Serve's local testing mode no longer keeps the ingress where this test looks (Ray upgrade?)")
    return wrapper._callable.app, wrapper.event_loop


@pytest.fixture(scope="module")
def local_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Call, Path]]:
    from ddgan.server.rayserve.app import build
    from ddgan.server.registry import load_registry
    from ddgan.server.settings import ServerSettings

    registry = write_registry(tmp_path_factory.mktemp("ray-local"), {"min_replicas": 1, "max_replicas": 1})
    settings = ServerSettings(registry=registry, png_workers=1)
    handle = serve.run(build(settings, load_registry(registry)), name="local", _local_testing_mode=True)
    app, loop = ingress_app(handle)

    def call(requests: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ray", timeout=60) as client:
                return await requests(client)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(120)

    async def ready(client: httpx.AsyncClient) -> int:
        for _ in range(120):
            response = await client.get("/readyz")
            if response.status_code == 200:
                return 200
            await asyncio.sleep(0.5)
        return response.status_code

    assert call(ready) == 200
    yield call, registry


def test_ingress_serves_the_native_api_and_bytes(local_app: tuple[Call, Path]) -> None:
    call, registry = local_app

    async def requests(client: httpx.AsyncClient) -> list[httpx.Response]:
        png = {"accept": "image/png"}
        return [
            await client.post("/generate", json={"dataset": "mnist", "n": 2, "seed": 7}, headers=png),
            await client.post("/generate", json={"dataset": "mnist", "n": 3, "seed": 11}),
            await client.post("/generate", json={"dataset": "celebahq"}),
            await client.post("/generate", json={"dataset": "mnist", "n": 0}),
            await client.get("/v1/models"),
        ]

    grid, body, missing, invalid, models = call(requests)
    assert grid.status_code == 200 and grid.headers["x-replica"].startswith("mnist-ddgan#")
    assert {"x-seed", "x-image-count", "x-steps", "x-weights", "server-timing"} <= set(grid.headers)
    assert body.json()["seeds"] == [11, 12, 13] and len(body.json()["images"]) == 3
    # X-Request-ID is the Serve proxy's (the ingress drops its own copy), and no proxy runs here: the header
    # check of the error shape is in test_rayserve.py, through the real proxy.
    for response, status, kind in ((missing, 404, "model_not_installed"), (invalid, 422, "invalid_request")):
        error = response.json()["error"]
        assert (response.status_code, error["status"], error["type"]) == (status, status, kind)
        assert error["request_id"] and error["message"]
    states = {(m["dataset"], m["state"]) for m in models.json()["models"]}
    assert states == {("mnist", "ready"), ("celebahq", "not_installed")}

    async def native_grid() -> bytes:
        async with serving(make_app(registry)) as native:
            response = await native.post(
                "/generate", json={"dataset": "mnist", "n": 2, "seed": 7}, headers={"accept": "image/png"}
            )
            return response.content

    assert asyncio.run(native_grid()) == grid.content  # same device type, backend, dtype: same bytes


def test_metrics_page_merges_replicas_under_a_replica_label(local_app: tuple[Call, Path]) -> None:
    call, _ = local_app

    def images_total(page: str) -> dict[str, float]:
        return {
            s.labels["replica"]: s.value
            for family in text_string_to_metric_families(page)
            for s in family.samples
            if s.name == "ddgan_images_generated_total"
        }

    async def requests(client: httpx.AsyncClient) -> tuple[str, str]:
        before = (await client.get("/metrics")).text
        for _ in range(20):  # the replica's series appear with its first push (every second)
            if images_total(before):
                break
            await asyncio.sleep(0.5)
            before = (await client.get("/metrics")).text
        for seed in (100, 200):
            assert (await client.post("/generate", json={"dataset": "mnist", "n": 4, "seed": seed})).status_code == 200
        for _ in range(20):  # replicas push their series every second
            after = (await client.get("/metrics")).text
            if sum(images_total(after).values()) - sum(images_total(before).values()) == 8:
                break
            await asyncio.sleep(0.5)
        return before, after

    before, after = call(requests)
    totals = images_total(after)
    assert sum(totals.values()) - sum(images_total(before).values()) == 8
    assert all(replica.startswith("mnist-ddgan#") for replica in totals)
    requests_200 = [
        s
        for family in text_string_to_metric_families(after)
        for s in family.samples
        if s.name == "ddgan_requests_total" and s.labels["status"] == "200" and s.value > 0
    ]
    assert requests_200 and all(s.labels["replica"].startswith("ingress#") for s in requests_200)
