"""Several workers for one model (the CPU form, `workers = 2`): both pull from the one queue, each with its own
sampler, metrics say which ran a batch, and a seed gives the same bytes whichever worker ran it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ddgan.server.loader import load_entry
from ddgan.server.registry import ModelEntry
from tests.server.conftest import Gate, WrappedSampler, make_app, write_registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

GATED = 1000


async def test_two_cpu_workers_both_serve_and_agree_bit_for_bit(tiny_models, started):
    gates: list[Gate] = []

    def load(entry: ModelEntry, **kwargs: Any) -> Any:
        sampler = load_entry(entry, **kwargs)
        if entry.sampler != "ddgan":
            return sampler
        gates.append(Gate())
        return WrappedSampler(sampler, gate=gates[-1])

    registry = write_registry(tiny_models, ddgan={"max_batch_images": 1, "max_wait_ms": 0, "workers": 2, "threads": 2})
    client = await started(make_app(registry, load))
    described = (await client.get("/v1/models")).json()["models"][0]
    assert described["workers"] == ["cpu#0", "cpu#1"] and len(gates) == 2

    def post(seed: int) -> asyncio.Task:
        # no-cache: every request reaches a sampler (a repeated seed would come from the PNG cache)
        body, headers = {"dataset": "mnist", "seed": seed}, {"cache-control": "no-cache"}
        return asyncio.create_task(client.post("/generate", json=body, headers=headers))

    async def blocked() -> int:
        while True:
            entered = [i for i, gate in enumerate(gates) if gate.entered.is_set() and not gate.release.is_set()]
            if entered:
                return entered[0]
            await asyncio.sleep(0.01)

    first_blocker = post(GATED)
    busy = await blocked()  # one worker holds the gated request ...
    on_other = await post(7)  # ... so the other one serves this
    assert on_other.status_code == 200
    second_blocker = post(GATED + 1)
    while not gates[1 - busy].entered.is_set():  # now the other worker is held ...
        await asyncio.sleep(0.01)
    gates[busy].release.set()
    on_first = await post(7)  # ... and the first one, released, serves the same seed
    gates[1 - busy].release.set()
    assert on_first.status_code == 200 and on_first.json()["images"] == on_other.json()["images"]
    assert (await first_blocker).status_code == (await second_blocker).status_code == 200
    metrics = (await client.get("/metrics")).text
    for label in ("cpu#0", "cpu#1"):
        assert f'ddgan_images_generated_total{{device="{label}",model="mnist",sampler="ddgan"}} 2.0' in metrics
