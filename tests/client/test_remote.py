"""The client and `ddgan generate --url` against a real `ddgan serve` (uvicorn) over the tiny test models."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ddgan.client import AsyncClient, BadRequestError, Client, JobFailedError, NotFoundError
from tests.server.conftest import build_tiny_models
from tests.server.test_uvicorn import REPO, Server, uvicorn_registry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    running = Server(uvicorn_registry(models), tmp_path_factory.mktemp("log") / "ddgan.server.log")
    try:
        running.wait_ready(300)  # the shared 2-core test machine can be slow to import torch
        yield running
    finally:
        running.stop()


def test_sync_and_async_clients_give_the_servers_images(server):
    raw = httpx.post(server.url + "/generate", json={"dataset": "mnist", "n": 3, "seed": 11}).json()
    with Client(server.url) as client:
        models = {(m.dataset, m.sampler): m for m in client.models()}
        assert models["mnist", "ddgan"].ready and models["mnist", "ddgan"].resolution == 16
        assert not models["celebahq", "ddgan"].ready
        generation = client.generate("mnist", n=3, seed=11)
        assert generation.seeds == [11, 12, 13] and generation.cached == 3  # the raw request above filled the cache
        assert generation.images == [base64.b64decode(b) for b in raw["images"]]
        image = client.image("mnist", 12)
        assert image.png == generation.images[1] and image.cache == "hit" and image.etag.startswith('"')
        ddpm = client.image("mnist", 12, sampler="ddpm", steps=2)
        assert ddpm.steps == 2 and ddpm.png != image.png
        with pytest.raises(BadRequestError) as invalid:
            client.generate("mnist", n=3, seed=11, steps=5)
        assert invalid.value.details[0]["field"] == "body.steps" and invalid.value.request_id
        with pytest.raises(NotFoundError, match="ddgan convert netG_550.pth") as missing:
            client.generate("celebahq")
        assert missing.value.type == "model_not_installed"

    async def in_async() -> list[bytes]:
        async with AsyncClient(server.url) as client:
            images = await client.images("mnist", [11, 12, 13])
            assert [i.seed for i in images] == [11, 12, 13]
            return [i.png for i in images]

    assert asyncio.run(in_async()) == generation.images


def test_client_jobs_against_the_server(server):
    with Client(server.url) as client:
        job = client.jobs.submit("mnist", n=2, seed=60, sampler="ddpm", steps=5)
        assert job.state in ("queued", "running") and job.progress.steps_total == 10
        updates: list[tuple[str, int]] = []
        done = client.jobs.wait(job, progress=lambda j: updates.append((j.state, j.progress.steps_done)))
        assert done.state == "succeeded" and updates[-1] == ("succeeded", 10)
        assert [steps for _, steps in updates] == sorted(steps for _, steps in updates)  # progress only grows
        result = client.jobs.result(job.id)
        assert result.seeds == [60, 61] and result.steps == 5
        assert result.images == [client.image("mnist", s, sampler="ddpm", steps=5).png for s in (60, 61)]
        cancelled = client.jobs.cancel(client.jobs.submit("mnist", n=8, seed=70, sampler="ddpm", steps=50).id)
        assert cancelled.state == "cancelled"
        with pytest.raises(JobFailedError, match="cancelled"):
            client.jobs.wait(cancelled)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DDGAN_API_KEY"}
    command = [sys.executable, "-m", "ddgan", "generate", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cli_generate_writes_one_png_per_seed(server, tmp_path):
    out = tmp_path / "out"
    done = run_cli("--url", server.url, "--dataset", "mnist", "-n", "4", "--seed", "7", "-o", str(out))
    assert done.returncode == 0, done.stderr
    names = [f"mnist-ddgan-seed{seed}.png" for seed in range(7, 11)]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    with Client(server.url) as client:
        expected = client.generate("mnist", n=4, seed=7).images
    assert [(out / name).read_bytes() for name in names] == expected
    assert "4 images (mnist/ddgan, 2 steps, seeds 7..10)" in done.stdout

    # DDPM runs as a job, with a progress bar of its denoising steps.
    ddpm = run_cli("--url", server.url, "--dataset", "mnist", "--sampler", "ddpm", "--steps", "2", "-n", "2",
                   "--seed", "3", "-o", str(out))  # fmt: skip
    assert ddpm.returncode == 0, ddpm.stderr
    assert "4/4" in ddpm.stderr and "step" in ddpm.stderr and "succeeded" in ddpm.stderr
    with Client(server.url) as client:
        assert (out / "mnist-ddpm-seed4.png").read_bytes() == client.image("mnist", 4, sampler="ddpm", steps=2).png


def test_cli_errors_are_one_line(server, tmp_path):
    missing = run_cli("--url", server.url, "--dataset", "celebahq", "-o", str(tmp_path))
    assert missing.returncode == 1 and missing.stderr.startswith("ddgan generate: 404 model_not_installed: ")
    assert list(tmp_path.iterdir()) == []
    nobody = run_cli("--url", "http://127.0.0.1:9", "--dataset", "mnist", "-o", str(tmp_path))
    assert nobody.returncode == 1 and "ddgan generate: POST http://127.0.0.1:9/generate" in nobody.stderr


def test_generate_help_imports_no_torch(tmp_path: Path):
    code = "import sys, ddgan.cli\ntry:\n    ddgan.cli.main(['generate', '--help'])\nexcept SystemExit:\n    pass\n"
    code += "assert 'torch' not in sys.modules, 'torch was imported'\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--url" in result.stdout
