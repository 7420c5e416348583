"""Shutdown within DDGAN_SHUTDOWN_TIMEOUT_S: one deadline, JSON 503 for what is still running, work stopped."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import DDPM_TRAIN_STEPS, GATED_SEEDS, Gate, error_of, make_app, serving, wrapping_loader
from tests.server.conftest import write_registry as tiny_registry
from tests.server.test_uvicorn import Server, value


def long_ddpm_registry(root: Path) -> Path:
    # One batch of 32 images x 50 steps: seconds of work on any CPU, far beyond a 0.5 s shutdown limit.
    ddpm = {"max_batch_images": 32, "max_wait_ms": 0, "max_queue_images": 64, "batch_invariant": False,
            "warmup_batch_sizes": [1]}  # fmt: skip
    return tiny_registry(root, ddpm=ddpm)


@pytest.mark.slow
def test_sigterm_answers_503_and_exits_within_a_sub_second_limit(tiny_models, tmp_path):
    limit = 0.5
    server = Server(long_ddpm_registry(tiny_models), tmp_path / "server.log", env={"DDGAN_SHUTDOWN_TIMEOUT_S": "0.5"})
    try:
        server.wait_ready()
        ddpm = {"model": "mnist", "sampler": "ddpm"}
        body = {"dataset": "mnist", "sampler": "ddpm", "n": 32, "seed": 1, "steps": DDPM_TRAIN_STEPS}

        async def scenario() -> tuple[httpx.Response, float]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                in_flight = asyncio.create_task(client.post("/generate", json=body))
                while value(server.url, "ddgan_requests_in_flight", **ddpm) < 1:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)  # the batch is running
                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                response = await in_flight
                await asyncio.to_thread(server.process.wait, 30)
                return response, time.monotonic() - signalled

        response, exit_s = asyncio.run(scenario())
        assert response.status_code == 503 and response.headers["content-type"] == "application/json"
        assert response.json()["error"]["type"] == "shutting_down"
        assert exit_s < limit + 2.5, f"exited {exit_s:.2f} s after SIGTERM (limit {limit} s)"
        log = server.log.read_text()
        assert "nobody waits for it" in log  # stopped mid-batch, not finished
        assert "Future exception was never retrieved" not in log and "Traceback" not in log
    finally:
        server.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_zero_limit_answers_waiting_requests_at_once(tiny_models):
    gate = Gate()
    load, samplers = wrapping_loader(ddgan={"gate": gate})
    app = make_app(tiny_registry(tiny_models), load, shutdown_timeout_s=0)
    async with serving(app) as client:
        blocked = asyncio.create_task(client.post("/generate", json={"dataset": "mnist", "n": 2, "seed": GATED_SEEDS}))
        await asyncio.to_thread(gate.wait_entered)
        queued = asyncio.create_task(client.post("/generate", json={"dataset": "mnist", "n": 1, "seed": 5}))
        while app.state.engine.lookup("mnist", "ddgan").queued_units < 1:
            await asyncio.sleep(0.01)
        app.state.engine.begin_shutdown(time.monotonic())
        for answer in await asyncio.gather(blocked, queued):
            assert answer.status_code == 503 and error_of(answer)["type"] == "shutting_down"
        assert (await client.post("/generate", json={"dataset": "mnist"})).status_code == 503
        gate.release.set()
        started = time.monotonic()
        await app.state.engine.stop()
        assert time.monotonic() - started < 2.0
    assert [5] not in samplers["ddgan"].calls  # the queued request never ran


class SlowWarmUp:
    """A sampler whose every call takes ~30 s of small steps (a large model warming up on a CPU)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.info = inner.info

    def sample(self, seeds, steps=None, progress=None):
        for step in range(3000):
            time.sleep(0.01)
            if progress is not None:
                progress(step + 1, 3000)
        return self.inner.sample(seeds, steps=steps)


@pytest.mark.asyncio(loop_scope="module")
async def test_shutdown_interrupts_a_warm_up(tiny_models):
    from ddgan.server.loader import load_entry

    app = make_app(tiny_registry(tiny_models), lambda entry, **kw: SlowWarmUp(load_entry(entry, **kw)))
    async with app.router.lifespan_context(app):
        engine = app.state.engine
        give_up = time.monotonic() + 30
        while engine.lookup("mnist", "ddgan").state.value != "warming":
            assert time.monotonic() < give_up, engine.lookup("mnist", "ddgan").reason
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await engine.stop()
        assert time.monotonic() - started < 3.0
        states = {m.entry.name: (m.state.value, m.reason) for m in engine.handles()}
    assert states["mnist/ddgan"] == ("failed", "server shut down during warm-up")
    assert states["mnist/ddpm"] == ("failed", "server shut down before the model loaded")
