"""The real thing: `ddgan serve` under uvicorn on a free loopback port, driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import DDPM_TRAIN_STEPS, write_registry

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    def __init__(self, registry: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DDGAN_SHUTDOWN_TIMEOUT_S": "20", **(env or {})}
        command = [sys.executable, "-m", "ddgan", "serve", "--registry", str(registry), "--port", str(self.port),
                   "--torch-threads", "1", "--png-workers", "2"]  # fmt: skip
        self.log = log
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def uvicorn_registry(root: Path) -> Path:
    # DDPM one image per batch, so a request of 8 images keeps its worker busy for 8 x 50 steps.
    return write_registry(
        root,
        ddgan={"max_batch_images": 8, "max_wait_ms": 150},
        ddpm={"max_batch_images": 1, "max_wait_ms": 0, "max_queue_images": 8},
    )


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(uvicorn_registry(tiny_models), tmp_path_factory.mktemp("log") / "ddgan.server.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(url: str, name: str, **labels: str) -> float:
    return samples(url).get((name, tuple(sorted(labels.items()))), 0.0)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_generate_json_png_and_headers(server):
    response = httpx.post(server.url + "/generate", json={"dataset": "mnist", "n": 4, "seed": 21})
    assert response.status_code == 200
    body = response.json()
    assert body["seeds"] == [21, 22, 23, 24] and [decode(i).shape for i in body["images"]] == [(16, 16)] * 4
    assert len(response.headers["x-request-id"]) == 32 and "inference;dur=" in response.headers["server-timing"]
    grid = httpx.post(server.url + "/generate", json={"dataset": "mnist", "n": 4, "seed": 21},
                      headers={"accept": "image/png"})  # fmt: skip
    assert Image.open(io.BytesIO(grid.content)).size == (2 * 18 + 2, 2 * 18 + 2)
    missing = httpx.post(server.url + "/generate", json={"dataset": "celebahq"})
    assert missing.status_code == 404 and "ddgan convert netG_550.pth" in missing.json()["error"]["message"]
    bad = httpx.post(server.url + "/generate", content=b"{oops", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "bad_json"


def test_concurrent_requests_match_lone_requests(server):
    requests = [(seed, n) for seed, n in [(500, 3), (600, 1), (700, 4), (800, 2), (900, 5)]]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/generate", json={"dataset": "mnist", "n": n, "seed": s}) for s, n in requests)
            )

    batches_before = value(server.url, "ddgan_batch_size_images_count", model="mnist", sampler="ddgan")
    together = asyncio.run(run())
    batches = value(server.url, "ddgan_batch_size_images_count", model="mnist", sampler="ddgan") - batches_before
    assert batches < len(requests)  # requests really shared batches
    for (seed, n), response in zip(requests, together, strict=True):
        alone = httpx.post(server.url + "/generate", json={"dataset": "mnist", "n": n, "seed": seed},
                           headers={"cache-control": "no-cache"}).json()  # fmt: skip
        assert response.json()["images"] == alone["images"]


def test_overload_deadline_and_disconnect_on_a_busy_ddpm_queue(server):
    url, ddpm = server.url, {"model": "mnist", "sampler": "ddpm"}
    images_before = value(url, "ddgan_images_generated_total", **ddpm)
    long_body = {"dataset": "mnist", "sampler": "ddpm", "n": 8, "seed": 1, "steps": DDPM_TRAIN_STEPS}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            long = asyncio.create_task(client.post("/generate", json=long_body))
            while value(url, "ddgan_requests_in_flight", **ddpm) < 1:
                await asyncio.sleep(0.02)
            full = await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm", "n": 2})
            assert full.status_code == 503 and full.json()["error"]["type"] == "overloaded"
            assert int(full.headers["retry-after"]) >= 1
            late = await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm", "timeout_s": 0.05})
            assert late.status_code == 504 and late.json()["error"]["type"] == "deadline_exceeded"
            # A client that hangs up while queued: its image must never be generated.
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                payload = b'{"dataset": "mnist", "sampler": "ddpm", "n": 1, "seed": 99}'
                raw.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip
                await asyncio.sleep(0.2)
            while value(url, "ddgan_requests_total", status="499", **ddpm) < 1:
                await asyncio.sleep(0.02)
            # DDGAN answers while the DDPM worker is busy.
            quick = await client.post("/generate", json={"dataset": "mnist", "n": 1})
            assert quick.status_code == 200 and not long.done()
            response = await long
            assert response.status_code == 200 and len(response.json()["images"]) == 8

    asyncio.run(scenario())
    assert value(url, "ddgan_images_generated_total", **ddpm) - images_before == 8  # not 9: the hang-up was dropped
    assert value(url, "ddgan_requests_total", status="503", **ddpm) >= 1
    assert value(url, "ddgan_requests_total", status="504", **ddpm) >= 1
    assert value(url, "ddgan_queued_images", **ddpm) == 0


def test_metrics_names_and_labels(server):
    httpx.post(server.url + "/generate", json={"dataset": "mnist", "n": 1})
    names = {name for name, _ in samples(server.url)}
    for expected in (
        "ddgan_request_latency_seconds_bucket", "ddgan_queue_wait_seconds_bucket",
        "ddgan_batch_inference_seconds_bucket", "ddgan_png_encode_seconds_bucket", "ddgan_batch_size_images_bucket",
        "ddgan_images_generated_total", "ddgan_requests_total", "ddgan_requests_in_flight", "ddgan_queued_images",
        "ddgan_model_info",
    ):  # fmt: skip
        assert expected in names, expected
    buckets = {
        dict(labels)["le"] for name, labels in samples(server.url) if name == "ddgan_request_latency_seconds_bucket"
    }
    assert {"0.001", "300.0", "+Inf"} <= buckets
    info = value(server.url, "ddgan_model_info", model="mnist", sampler="ddpm", backend="torch", device="cpu",
                 dtype="float32", weights="real")  # fmt: skip
    assert info == 1


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(tiny_models, tmp_path):
    server = Server(uvicorn_registry(tiny_models), tmp_path / "ddgan.server.log")
    try:
        server.wait_ready()
        ddpm = {"model": "mnist", "sampler": "ddpm"}
        body = {"dataset": "mnist", "sampler": "ddpm", "n": 6, "seed": 1, "steps": DDPM_TRAIN_STEPS}

        async def scenario() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                in_flight = asyncio.create_task(client.post("/generate", json=body))
                while value(server.url, "ddgan_requests_in_flight", **ddpm) < 1:
                    await asyncio.sleep(0.02)
                server.process.send_signal(signal.SIGTERM)
                return await in_flight

        response = asyncio.run(scenario())
        assert response.status_code == 200 and len(response.json()["images"]) == 6
        # uvicorn re-raises the signal it handled once shutdown is complete.
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.log.read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/healthz")
    finally:
        server.stop()
