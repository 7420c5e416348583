"""Hot reload of the registry: POST /admin/reload in-process (weights changed on disk, a broken registry, a
changed model that cannot load), and SIGHUP against a real uvicorn process (add, drain a removed model)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ddgan.model.checkpoint import save_model
from ddgan.model.sampler import random_generator
from tests.server.conftest import DDPM_TRAIN_STEPS, TINY_DDGAN, error_of, make_app
from tests.server.test_uvicorn import Server, samples, value

ADMIN = {"authorization": "Bearer admin-secret"}


def registry_text(models: dict[str, Path], **options: dict[str, Any]) -> str:
    """A registry of mnist/<sampler> entries at absolute `models` paths (tiny batches, CPU)."""
    tables = []
    for sampler, path in models.items():
        fields = {"max_batch_images": 4, "max_queue_images": 16, **options.get(sampler, {})}
        extra = "\n".join(f"{k} = {v!r}" for k, v in fields.items())
        tables.append(
            f'[[models]]\ndataset = "mnist"\nsampler = "{sampler}"\npath = "{path}"\ndevice = "cpu"\n{extra}\n'
        )
    return "\n".join(tables)


async def images_of(client: httpx.AsyncClient, seed: int) -> list[str]:
    response = await client.post("/generate", json={"dataset": "mnist", "n": 2, "seed": seed})
    assert response.status_code == 200, response.text
    return response.json()["images"]


@pytest.mark.asyncio(loop_scope="module")
async def test_admin_reload_is_disabled_without_its_key_and_documented(client):
    response = await client.post("/admin/reload")
    assert response.status_code == 404 and "DDGAN_ADMIN_KEY" in error_of(response)["message"]
    schema = (await client.get("/openapi.json")).json()
    responses = schema["paths"]["/admin/reload"]["post"]["responses"]
    assert responses["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ReloadPlan"}


@pytest.mark.asyncio(loop_scope="module")
async def test_admin_reload_swaps_changed_weights_and_refuses_a_broken_registry(tiny_models, tmp_path, started):
    ddgan_dir = tmp_path / "ddgan"
    shutil.copytree(tiny_models / "tiny-ddgan", ddgan_dir)
    registry = tmp_path / "registry.toml"
    registry.write_text(registry_text({"ddgan": ddgan_dir, "ddpm": tiny_models / "tiny-ddpm"}))
    app = make_app(registry, admin_key="admin-secret")
    client = await started(app)
    reloader, engine = app.state.reloader, app.state.engine
    before = await images_of(client, 11)

    assert (await client.post("/admin/reload")).status_code == 401
    wrong = await client.post("/admin/reload", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and error_of(wrong)["type"] == "unauthorized"
    same = await client.post("/admin/reload", headers=ADMIN)
    assert same.status_code == 202
    assert same.json() == {"generation": 1, "added": [], "removed": [], "changed": [],
                           "unchanged": ["mnist/ddgan", "mnist/ddpm"]}  # fmt: skip

    # Files touched, weights the same: reloaded beside, found identical, the old model kept.
    serving = engine.lookup("mnist", "ddgan")
    os.utime(ddgan_dir / "generator.safetensors")
    touched = (await client.post("/admin/reload", headers=ADMIN)).json()
    assert touched["changed"] == ["mnist/ddgan"]
    await reloader.wait_idle()
    assert engine.lookup("mnist", "ddgan") is serving

    save_model(ddgan_dir, TINY_DDGAN, random_generator(TINY_DDGAN, seed=99).state_dict())  # new weights
    changed = (await client.post("/admin/reload", headers=ADMIN)).json()
    assert changed["changed"] == ["mnist/ddgan"] and changed["unchanged"] == ["mnist/ddpm"]
    await reloader.wait_idle()
    assert engine.lookup("mnist", "ddgan") is not serving and serving.queue._closing  # the old one was closed
    after = await images_of(client, 11)
    assert after != before  # the new weights serve

    registry.write_text("[[models]]\ndataset = 'mnist'\nmax_batch_images = 0\n")
    broken = await client.post("/admin/reload", headers=ADMIN)
    assert broken.status_code == 422 and error_of(broken)["type"] == "invalid_registry"
    assert "max_batch_images" in error_of(broken)["message"]
    assert await images_of(client, 11) == after
    models = (await client.get("/v1/models")).json()["models"]
    assert [(m["sampler"], m["state"]) for m in models] == [("ddgan", "ready"), ("ddpm", "ready")]

    # A changed entry whose new model cannot load: the old one serves on.
    registry.write_text(registry_text({"ddgan": tmp_path / "absent", "ddpm": tiny_models / "tiny-ddpm"}))
    assert (await client.post("/admin/reload", headers=ADMIN)).json()["changed"] == ["mnist/ddgan"]
    await reloader.wait_idle()
    assert await images_of(client, 11) == after
    metrics = (await client.get("/metrics")).text
    assert 'ddgan_registry_reloads_total{result="applied"} 4.0' in metrics
    assert 'ddgan_registry_reloads_total{result="rejected"} 1.0' in metrics


def models_of(server: Server) -> dict[str, str]:
    return {m["sampler"]: m["state"] for m in httpx.get(server.url + "/v1/models").json()["models"]}


def wait_until(check: Any, what: str, timeout: float = 300) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sighup_adds_drains_and_survives_a_broken_registry(tiny_models, tmp_path):
    registry = tmp_path / "registry.toml"
    ddgan, ddpm = tiny_models / "tiny-ddgan", tiny_models / "tiny-ddpm"
    registry.write_text(registry_text({"ddgan": ddgan}))
    server = Server(registry, tmp_path / "ddgan.server.log")
    try:
        server.wait_ready(300)  # generous: the suite shares 2 cores
        assert models_of(server) == {"ddgan": "ready"}
        # Added: loads in the background, appears once loaded.
        one_at_a_time = {"max_batch_images": 1, "max_wait_ms": 0}
        registry.write_text(registry_text({"ddgan": ddgan, "ddpm": ddpm}, ddpm=one_at_a_time))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: models_of(server).get("ddpm") == "ready", "the added DDPM")

        async def drain() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = {"dataset": "mnist", "sampler": "ddpm", "n": 3, "seed": 1, "steps": DDPM_TRAIN_STEPS}
                in_flight = asyncio.create_task(client.post("/generate", json=body))
                ddpm_labels = {"model": "mnist", "sampler": "ddpm"}
                while value(server.url, "ddgan_requests_in_flight", **ddpm_labels) < 1:
                    await asyncio.sleep(0.02)
                # Removed while it holds a request: gone for new requests at once, the held one completes.
                registry.write_text(registry_text({"ddgan": ddgan}))
                server.process.send_signal(signal.SIGHUP)
                while "ddpm" in models_of(server):
                    await asyncio.sleep(0.02)
                late = await client.post("/generate", json={"dataset": "mnist", "sampler": "ddpm"})
                assert late.status_code == 404 and late.json()["error"]["type"] == "unknown_model"
                assert not in_flight.done()
                return await in_flight

        response = asyncio.run(drain())
        assert response.status_code == 200 and len(response.json()["images"]) == 3

        registry.write_text("this is [not toml")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "registry reload refused" in server.log.read_text(), "the refusal in the log")
        assert "not valid TOML" in server.log.read_text()
        assert models_of(server) == {"ddgan": "ready"}
        assert httpx.post(server.url + "/generate", json={"dataset": "mnist"}).status_code == 200
        assert value(server.url, "ddgan_registry_reloads_total", result="rejected") == 1
        served = {dict(labels)["sampler"] for name, labels in samples(server.url) if name == "ddgan_model_info"}
        assert served == {"ddgan"}  # the removed model no longer counts as served
    finally:
        server.stop()
