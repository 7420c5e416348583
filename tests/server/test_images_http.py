"""Content-addressed images over real HTTP (`ddgan serve` under uvicorn): caching headers, 304s, the PNG cache."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.test_uvicorn import Server, uvicorn_registry, value


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(uvicorn_registry(tiny_models), tmp_path_factory.mktemp("log") / "ddgan.server.log")
    try:
        running.wait_ready(300)  # the shared 2-core test machine can be slow to import torch
        yield running
    finally:
        running.stop()


def test_image_headers_and_conditional_requests(server):
    url = server.url + "/v1/images/mnist/ddgan/314.png"
    ddgan = {"model": "mnist", "sampler": "ddgan"}
    first = httpx.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content.startswith(b"\x89PNG\r\n\x1a\n")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) == 42  # strong: the models are batch-invariant
    assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert first.headers["x-cache"] == "miss" and "inference;dur=" in first.headers["server-timing"]

    second = httpx.get(url)
    assert second.content == first.content and second.headers["etag"] == etag and second.headers["x-cache"] == "hit"

    not_modified = 0
    for header in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        response = httpx.get(url, headers={"if-none-match": header})
        assert response.status_code == 304, header
        assert response.content == b"" and response.headers["etag"] == etag
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        not_modified += 1
    for header in ('"stale"', etag.strip('"')):  # another tag; an unquoted (malformed) one
        response = httpx.get(url, headers={"if-none-match": header})
        assert response.status_code == 200 and response.content == first.content, header

    # /generate over HTTP shares the cache: seed 314 is the second image of this request.
    body = httpx.post(server.url + "/generate", json={"dataset": "mnist", "n": 2, "seed": 313}).json()
    assert body["cached"] == 1 and base64.b64decode(body["images"][1]) == first.content

    assert value(server.url, "ddgan_image_requests_total", status="304", **ddgan) == not_modified
    assert value(server.url, "ddgan_image_requests_total", status="200", **ddgan) == 4
    assert value(server.url, "ddgan_png_cache_hits_total", **ddgan) == 4
    assert value(server.url, "ddgan_png_cache_misses_total", **ddgan) == 2


def test_other_seed_steps_or_model_is_another_etag(server):
    base = server.url + "/v1/images/mnist"
    tags = {
        httpx.get(f"{base}/ddgan/1.png").headers["etag"],
        httpx.get(f"{base}/ddgan/2.png").headers["etag"],
        httpx.get(f"{base}/ddpm/1.png", params={"steps": 2}).headers["etag"],
        httpx.get(f"{base}/ddpm/1.png", params={"steps": 3}).headers["etag"],
    }
    assert len(tags) == 4
    # A tag of another image never gives a 304.
    of_seed_2 = httpx.get(f"{base}/ddgan/2.png").headers["etag"]
    other = httpx.get(f"{base}/ddgan/1.png", headers={"if-none-match": of_seed_2})
    assert other.status_code == 200
