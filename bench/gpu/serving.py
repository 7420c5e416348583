"""Stage `serve`: `ddgan serve` on the device with random weights, end to end over HTTP, against its raw sampler.

The server is spawned as a user runs it (`python -m ddgan serve --random-weights`) on a free loopback port with a
registry holding one entry, the dataset's DDGAN from models/registry.toml (the smoke plan shrinks its batch).
Measured: p50/p99 wall latency of sequential requests of n images (JSON with base64 PNGs; the server's own
queue / inference / PNG split of each answer beside it), images/s at `serve_concurrency` clients, and the raw
sampler (`sampler.sample` in this process, no HTTP, no PNG) at batch n, timed after the HTTP runs while the
server is idle. The server is stopped by PID, also when the stage's time limit kills this process's group.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ddgan.bench.gpu.common import REPO, Plan, StageRecord
from ddgan.bench.serve import closed_loop, load_raw_sampler, model_info, raw_sampler_rates, spawned_server, toml_value


def one_model_registry(source: Path, dataset: str, out: Path, overrides: dict[str, Any]) -> Path:
    """A registry with `source`'s DDGAN entry for `dataset` only (absolute path, `overrides` applied)."""
    from ddgan.server.registry import load_registry

    entry = load_registry(source).get(dataset, "ddgan")
    if entry is None:
        raise SystemExit(f"{source} has no ddgan model for {dataset!r}")
    data = {**entry.model_dump(exclude_none=True), "path": str(entry.path), **overrides}
    out.write_text("[[models]]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in data.items()))
    return out


def sequential(url: str, body: dict[str, Any], requests: int) -> list[dict[str, float]]:
    """One request after another: wall latency and the server's own split of each answer, in ms."""
    samples = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for index in range(requests):
            sent = time.perf_counter()
            response = client.post("/generate", json={**body, "seed": 1000 * index})
            wall_ms = (time.perf_counter() - sent) * 1e3
            response.raise_for_status()
            split = response.json()["latency_ms"]
            samples.append({"wall": wall_ms, **{key: float(value) for key, value in split.items()}})
    return samples


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(stage: str, plan: Plan, record: StageRecord) -> bool:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    dataset, n = plan.serve_dataset, plan.serve_n
    with tempfile.TemporaryDirectory(prefix="ddgan-gpu-serve-") as work:
        workdir = Path(work)
        registry = one_model_registry(
            REPO / "models" / "registry.toml", dataset, workdir / "source.toml", plan.serve_registry_overrides
        )
        args = argparse.Namespace(
            registry=registry,
            dataset=dataset,
            random_weights=True,
            torch_threads=plan.serve_torch_threads,
            server_cpus=None,  # the device's every CPU: pinning is a CPU-bench option
        )
        body = {"dataset": dataset, "n": n}
        started = time.perf_counter()
        try:
            with spawned_server(args, workdir) as url:
                record.note(f"server ready after {time.perf_counter() - started:.1f} s (start-up and warm-up)")
                info = model_info(url, dataset)["ddgan"]
                record.note(
                    f"served: {dataset} ddgan, backend {info['backend']}, device {info['device']}, dtype "
                    f"{info['dtype']}, {info['weights']} weights, max_batch_images {info['max_batch_images']}"
                )
                sequential(url, body, 1)  # the first answer pays one-off costs (first PNG pool use, connections)
                samples = sequential(url, body, plan.serve_requests)
                walls = [s["wall"] for s in samples]
                record.add(
                    run=f"sequential n={n}",
                    requests=len(samples),
                    p50_ms=_percentile(walls, 50),
                    p99_ms=_percentile(walls, 99),
                    images_per_s=n * len(walls) / (sum(walls) / 1e3),
                    server_inference_ms=statistics.median(s["inference"] for s in samples),
                    server_png_ms=statistics.median(s["png_encode"] for s in samples),
                    server_total_ms=statistics.median(s["total"] for s in samples),
                )
                level = asyncio.run(
                    closed_loop(url, body, plan.serve_concurrency, None, plan.serve_requests, "concurrent")
                )
                record.add(
                    run=f"{plan.serve_concurrency} clients n={n}",
                    requests=level.requests,
                    p50_ms=level.p50_ms,
                    p99_ms=level.p99_ms,
                    images_per_s=level.images_per_s,
                    note=", ".join(f"HTTP {k}: {v}" for k, v in level.errors.items()),
                )
                sampler = load_raw_sampler(registry, dataset, random_weights=True)
                raw = raw_sampler_rates(sampler, [n], seconds=plan.raw_seconds)[n]
                record.add(run=f"raw sampler batch {n}", p50_ms=n / raw * 1e3, images_per_s=raw,
                           note="ms: the mean per batch of sampler.sample, no HTTP or PNG")  # fmt: skip
        finally:
            log = workdir / "ddgan.server.log"
            if log.is_file():  # the server's own log goes into the stage's log
                print("---- ddgan serve log (last 60 lines) ----")
                print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
    for row in record.rows:
        if not row["run"].startswith("raw"):
            row["server_over_raw"] = row["images_per_s"] / raw
    seq, conc = record.rows[0], record.rows[1]
    record.set_summary(
        f"n={n}: p50 {seq['p50_ms']:.0f} ms, p99 {seq['p99_ms']:.0f} ms; server/raw {seq['server_over_raw']:.2f} "
        f"sequential, {conc['server_over_raw']:.2f} at {plan.serve_concurrency} clients"
    )
    return not conc.get("note")
