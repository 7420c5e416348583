"""Async jobs through a real uvicorn process: submit, poll, result negotiation, server-sent events, cancel of a
running DDPM batch, owners, the live-job bound."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import DDPM_TRAIN_STEPS, error_of
from tests.server.test_uvicorn import Server, uvicorn_registry, value

JOBS_MAX = 3
TINY_DDGAN_STEPS = 2  # TINY_DDGAN's T


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("log") / "ddgan.server.log"
    running = Server(uvicorn_registry(tiny_models), log, env={"DDGAN_JOBS_MAX": str(JOBS_MAX)})
    try:
        running.wait_ready(300)  # generous: the suite shares 2 cores
        yield running
    finally:
        running.stop()


def wait_for(url: str, job_id: str, until: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        status = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
        if until(status):
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached the expected state: {status}")


def finished(status: dict[str, Any]) -> bool:
    return status["state"] in ("succeeded", "failed", "cancelled")


def test_job_result_is_what_generate_answers(server):
    body = {"dataset": "mnist", "n": 4, "seed": 21}
    submitted = httpx.post(server.url + "/v1/jobs", json=body)
    assert submitted.status_code == 202
    job = submitted.json()
    assert submitted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["progress"]["images_total"] == 4
    status = wait_for(server.url, job["id"], finished)
    assert status["state"] == "succeeded" and status["result_url"] == f"/v1/jobs/{job['id']}/result"
    assert status["progress"] == {"images_done": 4, "images_total": 4, "steps_done": 4 * TINY_DDGAN_STEPS,
                                  "steps_total": 4 * TINY_DDGAN_STEPS, "fraction": 1.0}  # fmt: skip
    timings = status["timings"]
    assert timings["created_at"] <= timings["started_at"] <= timings["finished_at"] < timings["expires_at"]
    assert timings["expires_at"] - timings["finished_at"] == pytest.approx(600)  # DDGAN_JOBS_TTL_S default

    result = httpx.get(server.url + status["result_url"])
    # The job's images fed the PNG cache: regenerate, so that the sampler really runs the seeds again.
    direct = httpx.post(server.url + "/generate", json=body, headers={"cache-control": "no-cache"})
    assert result.status_code == 200 and result.json()["seeds"] == [21, 22, 23, 24]
    assert result.json()["images"] == direct.json()["images"]
    grid = httpx.get(server.url + status["result_url"], headers={"accept": "image/png"})
    direct_grid = httpx.post(
        server.url + "/generate", json=body, headers={"accept": "image/png", "cache-control": "no-cache"}
    )
    assert grid.headers["content-type"] == "image/png" and grid.content == direct_grid.content
    archive = httpx.get(server.url + status["result_url"], headers={"accept": "application/zip"})
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert names == [f"mnist-ddgan-seed{s}.png" for s in (21, 22, 23, 24)] + ["metadata.json"]
    refused = httpx.get(server.url + status["result_url"], headers={"accept": "text/html"})
    assert refused.status_code == 406 and error_of(refused)["type"] == "not_acceptable"

    forgotten = httpx.delete(f"{server.url}/v1/jobs/{job['id']}")  # a finished job: forgotten with its result
    assert forgotten.status_code == 200 and forgotten.json()["state"] == "succeeded"
    gone = httpx.get(server.url + status["result_url"])
    assert gone.status_code == 404 and error_of(gone)["type"] == "job_not_found"


def test_submission_is_checked_like_generate(server):
    unknown = httpx.post(server.url + "/v1/jobs", json={"dataset": "nope"})
    assert unknown.status_code == 404 and error_of(unknown)["type"] == "unknown_model"
    steps = httpx.post(server.url + "/v1/jobs", json={"dataset": "mnist", "sampler": "ddpm", "steps": 5000})
    assert steps.status_code == 422 and error_of(steps)["type"] == "invalid_request"
    missing = httpx.get(server.url + "/v1/jobs/0123456789abcdef")
    assert missing.status_code == 404 and error_of(missing)["type"] == "job_not_found"


def test_a_job_belongs_to_the_key_that_made_it(server):
    alice, bob = {"authorization": "Bearer alice"}, {"authorization": "Bearer bob"}
    job = httpx.post(server.url + "/v1/jobs", json={"dataset": "mnist", "n": 1}, headers=alice).json()
    for other in (bob, {}):
        for path in ("", "/result", "/events"):
            response = httpx.get(f"{server.url}/v1/jobs/{job['id']}{path}", headers=other)
            assert response.status_code == 404 and error_of(response)["type"] == "job_not_found"
        assert httpx.delete(f"{server.url}/v1/jobs/{job['id']}", headers=other).status_code == 404
    assert wait_for(server.url, job["id"], finished, alice)["state"] == "succeeded"


def read_events(url: str) -> list[tuple[str, dict[str, Any]]]:
    """Every SSE event until the server closes the stream: (event name, data)."""
    events, fields = [], {}
    with httpx.stream("GET", url, timeout=60) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if not line:
                if "data" in fields:
                    events.append((fields.get("event", "message"), json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, data = line.partition(": ")
                fields[name] = data
    return events


def test_events_stream_ddpm_steps_until_done(server):
    steps_each = 12
    body = {"dataset": "mnist", "sampler": "ddpm", "n": 2, "seed": 3, "steps": steps_each}
    job = httpx.post(server.url + "/v1/jobs", json=body).json()
    events = read_events(f"{server.url}/v1/jobs/{job['id']}/events")
    assert {name for name, _ in events} == {"job"}
    states = [data["state"] for _, data in events]
    steps = [data["progress"]["steps_done"] for _, data in events]
    assert states[-1] == "succeeded" and "running" in states and all(s != "succeeded" for s in states[:-1])
    assert steps == sorted(steps) and steps[-1] == 2 * steps_each
    assert any(0 < s < steps_each for s in steps)  # denoising steps of a running image, not just images
    assert [data["progress"]["images_done"] for _, data in events][-1] == 2
    result = httpx.get(f"{server.url}/v1/jobs/{job['id']}/result").json()
    assert result["steps"] == steps_each and len(result["images"]) == 2
    finished_again = read_events(f"{server.url}/v1/jobs/{job['id']}/events")  # a finished job: one event
    assert [data["state"] for _, data in finished_again] == ["succeeded"]


def test_cancel_drops_queued_work_and_stops_the_running_batch(server):
    ddpm = {"model": "mnist", "sampler": "ddpm"}
    generated_before = value(server.url, "ddgan_images_generated_total", **ddpm)
    body = {"dataset": "mnist", "sampler": "ddpm", "n": 8, "seed": 1, "steps": DDPM_TRAIN_STEPS}
    job = httpx.post(server.url + "/v1/jobs", json=body).json()
    running = wait_for(server.url, job["id"], lambda s: s["progress"]["steps_done"] > 0)
    assert running["state"] == "running"
    cancelled = httpx.delete(f"{server.url}/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    images_done = cancelled.json()["progress"]["images_done"]
    give_up = time.monotonic() + 30
    while "nobody waits for it" not in server.log.read_text() and time.monotonic() < give_up:
        time.sleep(0.05)
    assert "nobody waits for it" in server.log.read_text()  # the running image stopped at its next step
    assert value(server.url, "ddgan_queued_images", **ddpm) == 0  # the queued seven were dropped
    assert value(server.url, "ddgan_images_generated_total", **ddpm) - generated_before == images_done
    result = httpx.get(f"{server.url}/v1/jobs/{job['id']}/result")
    assert result.status_code == 409 and error_of(result)["type"] == "job_cancelled"
    assert httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["state"] == "cancelled"
    # The worker is free again at once.
    quick = httpx.post(server.url + "/generate", json={"dataset": "mnist", "sampler": "ddpm", "n": 1}, timeout=30)
    assert quick.status_code == 200


def test_jobs_wait_for_queue_room_and_live_jobs_are_bounded(server):
    body = {"dataset": "mnist", "sampler": "ddpm", "n": 8, "seed": 1, "steps": DDPM_TRAIN_STEPS}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            jobs = [(await client.post("/v1/jobs", json=body)).json() for _ in range(JOBS_MAX)]
            # The model's queue holds 8 images: the later jobs wait for room instead of answering 503.
            assert all(job["state"] == "queued" for job in jobs[1:])
            full = await client.post("/v1/jobs", json={"dataset": "mnist"})
            assert full.status_code == 503 and error_of(full)["type"] == "jobs_full"
            assert int(full.headers["retry-after"]) >= 1
            for job in reversed(jobs):
                cancelled = await client.delete(f"/v1/jobs/{job['id']}")
                assert cancelled.json()["state"] == "cancelled"
            assert (await client.post("/v1/jobs", json={"dataset": "mnist"})).status_code == 202

    asyncio.run(scenario())
    assert value(server.url, "ddgan_jobs_rejected_total") >= 1
    assert value(server.url, "ddgan_jobs_finished_total", model="mnist", sampler="ddpm", state="cancelled") >= 3
