"""The Ray engine on a real two-node Ray cluster (loopback): replicas of the bundled mnist DDGAN behind the
ingress, the same HTTP API, replica header and merged metrics, a replica killed under load, backpressure,
autoscaling 1 -> 2 -> 1. One cluster for the module (starting Ray is the slow part); every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import error_of, make_app, serving
from tests.server.ray_cluster import Cluster, free_port, two_node_cluster

ray = pytest.importorskip("ray", reason="needs the ray extra (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MNIST = Path(__file__).resolve().parents[2] / "models" / "mnist"
APP, AUTO_APP = "ddgan", "auto"
DEPLOYMENT = "mnist-ddgan"


def write_registry(root: Path, scaling: dict[str, Any]) -> Path:
    table = ", ".join(f"{key} = {value}" for key, value in scaling.items())
    text = f"""
[[models]]
dataset = "mnist"
sampler = "ddgan"
path = "{MNIST}"
device = "cpu"
max_batch_images = 4
micro_batch = 4  # fixed, not measured per replica: the same forward size everywhere gives the same bytes
max_wait_ms = 5
max_queue_images = 16
scaling = {{ {table} }}

[[models]]
dataset = "celebahq"
sampler = "ddgan"
path = "{root}/celebahq"
install = "ddgan convert netG_550.pth --preset celebahq -o models/celebahq"
"""
    path = root / f"registry-{len(list(root.iterdir()))}.toml"
    path.write_text(text)
    return path


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def deploy(registry: Path, name: str, route: str) -> str:
    from ddgan.server.rayserve.app import build
    from ddgan.server.registry import load_registry
    from ddgan.server.settings import ServerSettings

    settings = ServerSettings(registry=registry, png_workers=1, request_timeout_s=60)
    serve.run(build(settings, load_registry(registry)), name=name, route_prefix=route)
    return route


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, str, Path]]:
    http_port = free_port()
    with two_node_cluster(cpus_per_node=2) as running:
        ray.init(address=running.address, _node_ip_address=running.head_ip, log_to_driver=False)
        try:
            for attempt in range(3):
                try:
                    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
                    break
                except TimeoutError:  # serve.start waits 60 s for its HTTP proxy: longer on a loaded 2-core host
                    if attempt == 2:
                        raise
            yield running, f"http://127.0.0.1:{http_port}", tmp_path_factory.mktemp("ray-registry")
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def two_replicas(cluster: tuple[Cluster, str, Path]) -> tuple[str, Path]:
    _, url, root = cluster
    scaling = {"min_replicas": 2, "max_replicas": 2, "max_ongoing_requests": 2, "max_queued_requests": 2}
    registry = write_registry(root, scaling)
    deploy(registry, APP, "/")
    with httpx.Client(base_url=url, timeout=10) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 300, "the ingress is ready")
    return url, registry


def replica_statuses(app: str, calls: int = 24) -> list[Any]:
    """Statuses of the replicas the router picks for `calls` calls, two at a time (more would be shed by the
    deployment's own max_queued_requests)."""
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app)
    statuses = []
    for _ in range(calls // 2):
        pair = [handle.status.remote(), handle.status.remote()]
        statuses += [response.result(timeout_s=30) for response in pair]
    return statuses


def replica_count(app: str) -> int:
    deployment = serve.status().applications[app].deployments[DEPLOYMENT]
    return int(deployment.replica_states.get("RUNNING", 0))


async def generate(client: httpx.AsyncClient, seed: int, n: int = 1, **body: Any) -> httpx.Response:
    return await client.post(
        "/generate",
        json={"dataset": "mnist", "n": n, "seed": seed, **body},
        headers={"accept": "image/png", "cache-control": "no-cache, no-store"},  # a replica computes every one
    )


async def retrying(client: httpx.AsyncClient, seed: int, attempts: int = 5) -> httpx.Response:
    """`generate(n=2)`, retried on 503 overloaded after its Retry-After (capped at 1 s to keep the test short)."""
    for _ in range(attempts - 1):
        response = await generate(client, seed, n=2)
        if response.status_code != 503:
            return response
        assert error_of(response)["type"] == "overloaded" and int(response.headers["retry-after"]) >= 1
        await asyncio.sleep(1.0)
    return await generate(client, seed, n=2)


async def test_two_replicas_on_two_nodes_give_the_native_bytes(two_replicas: tuple[str, Path]) -> None:
    url, registry = two_replicas
    statuses = await asyncio.to_thread(replica_statuses, APP)  # handle results block: off the event loop
    assert len({s.replica for s in statuses}) == 2
    assert len({s.node for s in statuses}) == 2, "Serve spreads the two replicas over both nodes"

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        # 4 at a time: 2 replicas x max_ongoing_requests 2; Serve's routing may still shed one (503 overloaded,
        # Retry-After), and a client retries it as the contract says
        responses = [r for _ in range(3) for r in await asyncio.gather(*(retrying(client, 7) for _ in range(4)))]
    assert [r.status_code for r in responses] == [200] * 12
    assert {r.headers["x-replica"] for r in responses} == {s.replica for s in statuses}, "both replicas served"
    assert len({r.content for r in responses}) == 1, "the same seed gives the same bytes from either replica"
    assert responses[0].headers["x-seed"] == "7" and responses[0].headers["x-image-count"] == "2"

    # ... and the bytes the native server gives on this machine (same device type, backend and dtype).
    async with serving(make_app(registry)) as native:
        expected = await generate(native, seed=7, n=2)
    assert expected.status_code == 200 and expected.content == responses[0].content
    assert "x-replica" not in expected.headers


async def test_same_api_and_error_shape_as_native(two_replicas: tuple[str, Path]) -> None:
    url, _ = two_replicas
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        body = (await client.post("/generate", json={"dataset": "mnist", "n": 3, "seed": 11})).json()
        missing = await client.post("/generate", json={"dataset": "celebahq"})
        invalid = await client.post("/generate", json={"dataset": "mnist", "n": 0})
        unknown = await client.post("/generate", json={"dataset": "nope"})
        models = (await client.get("/v1/models")).json()["models"]
        ready = await client.get("/readyz")
    assert body["seeds"] == [11, 12, 13] and len(body["images"]) == 3 and body["backend"] == "torch"
    assert (missing.status_code, error_of(missing)["type"]) == (404, "model_not_installed")
    assert "ddgan convert netG_550.pth" in error_of(missing)["message"]
    assert (invalid.status_code, error_of(invalid)["type"]) == (422, "invalid_request")
    assert (unknown.status_code, error_of(unknown)["type"]) == (404, "unknown_model")
    assert {(m["dataset"], m["state"]) for m in models} == {("mnist", "ready"), ("celebahq", "not_installed")}
    assert ready.status_code == 200 and ready.json()["ready"] is True


async def test_metrics_of_every_replica_with_a_replica_label(two_replicas: tuple[str, Path]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    url, _ = two_replicas

    def samples(text: str, name: str) -> list[Any]:
        return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]

    def by_replica(text: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for sample in samples(text, "ddgan_images_generated_total"):  # one series per worker of a replica
            totals[sample.labels["replica"]] = totals.get(sample.labels["replica"], 0.0) + sample.value
        return totals

    with httpx.Client(base_url=url, timeout=30) as client:
        # both replicas served the tests before this one; their series appear with their next push
        def settled() -> str | None:  # both replicas' series there, and unchanged over more than one push
            first = client.get("/metrics").text
            time.sleep(1.5)
            page = client.get("/metrics").text
            return page if len(by_replica(page)) == 2 and by_replica(page) == by_replica(first) else None

        before = wait_until(settled, 20, "both replicas' series settled on /metrics")
        for seed in range(500, 512, 2):  # 12 images never generated before: none is a PNG-cache hit
            assert client.post("/generate", json={"dataset": "mnist", "n": 2, "seed": seed}).status_code == 200

        def images_by_replica() -> dict[str, float] | None:
            page = client.get("/metrics").text
            total, old = by_replica(page), by_replica(before)
            seen.append((old, total))
            return total if sum(total.values()) - sum(old.values()) == 12 else None

        seen: list[tuple[dict[str, float], dict[str, float]]] = []
        try:
            per_replica = wait_until(images_by_replica, 15, "12 more images counted over the replicas")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; (before, now) by replica: {seen[-1:]}") from None
        page = client.get("/metrics").text
    replicas = {s.replica for s in await asyncio.to_thread(replica_statuses, APP)}
    assert set(per_replica) <= replicas and set(per_replica)
    # Requests are counted by the ingress, under its own replica label (the names are the native server's); a
    # model replica exports its request series at zero from start-up, so sums over replicas stay right.
    requests = [s for s in samples(page, "ddgan_requests_total") if s.labels["model"] == "mnist"]
    counted = {s.labels["replica"] for s in requests if s.value > 0}
    assert counted and all(replica.startswith("ingress#") for replica in counted), counted
    assert {s.labels["replica"] for s in samples(page, "ddgan_queued_images")} <= replicas


async def test_overload_answers_only_200_or_503_with_retry_after(two_replicas: tuple[str, Path]) -> None:
    url, _ = two_replicas
    # 2 replicas x 2 ongoing + 2 queued take 6 requests at once: 24 at once overflow Serve's queue.
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        responses = await asyncio.gather(*(generate(client, seed=100 + i, n=4) for i in range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert error_of(response)["type"] == "overloaded"
            assert int(response.headers["retry-after"]) >= 1


async def test_replica_killed_under_load(two_replicas: tuple[str, Path]) -> None:
    url, _ = two_replicas
    victim = (await asyncio.to_thread(replica_statuses, APP))[0]
    outcomes: list[int] = []

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        for i in range(6):
            response = await generate(client, seed=1000 + worker * 10 + i, n=2, timeout_s=30)
            outcomes.append(response.status_code)
            if response.status_code != 200:
                assert error_of(response)["type"] in ("generation_failed", "overloaded"), response.text

    async with httpx.AsyncClient(base_url=url, timeout=45) as client:
        load = asyncio.gather(*(client_loop(client, w) for w in range(3)))
        await asyncio.sleep(1.0)
        os.kill(victim.pid, signal.SIGKILL)  # the replica's worker process
        started = time.monotonic()
        await asyncio.wait_for(load, 120)
    assert time.monotonic() - started < 100, "nothing hung past its deadline"
    assert len(outcomes) == 18 and outcomes.count(200) >= 12, outcomes  # retried on the other replica

    def restored() -> bool:
        names = {s.replica for s in replica_statuses(APP, calls=12)}
        return replica_count(APP) == 2 and len(names) == 2 and victim.replica not in names

    await asyncio.to_thread(wait_until, restored, 120, "Serve replaced the killed replica")


async def test_autoscaling_one_two_one(cluster: tuple[Cluster, str, Path]) -> None:
    _, url, root = cluster
    if APP in serve.status().applications:
        serve.delete(APP)  # frees the CPUs of the two fixed replicas (this test runs last)
    scaling = {
        "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "max_ongoing_requests": 4,
        "upscale_delay_s": 0.5, "downscale_delay_s": 3, "look_back_period_s": 1,
    }  # fmt: skip
    deploy(write_registry(root, scaling), AUTO_APP, "/auto")
    auto = f"{url}/auto"
    with httpx.Client(base_url=auto, timeout=10) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 300, "the autoscaled app is ready")
    assert replica_count(AUTO_APP) == 1

    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        i = 0
        while not stop.is_set():
            response = await generate(client, seed=worker * 1000 + i, n=4)
            assert response.status_code in (200, 503)
            i += 1

    async with httpx.AsyncClient(base_url=auto, timeout=60) as client:
        load = asyncio.gather(*(client_loop(client, w) for w in range(4)))
        give_up = time.monotonic() + 90
        while replica_count(AUTO_APP) < 2 and time.monotonic() < give_up:
            await asyncio.sleep(0.5)
        scaled_up = replica_count(AUTO_APP)
        stop.set()
        await asyncio.wait_for(load, 60)
    assert scaled_up == 2, "4 clients against target_ongoing_requests=1 add the second replica"
    wait_until(lambda: replica_count(AUTO_APP) == 1, 60, "back to one replica after idle")
