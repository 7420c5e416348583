"""`ddgan bench serve-ray`: the Ray engine's scaling and its overhead over the native server, in one run.

A local Ray cluster (started by this process) serves the dataset's DDGAN as two applications, `/r1` with one
replica and `/r2` with two, each replica on one CPU and one torch thread; `ddgan serve --torch-threads 1` runs
beside them. Closed-loop runs at the same concurrency interleave native, Ray 1 replica and Ray 2 replicas in
each round, so that load drifts on a shared machine hit all three alike; the report gives images/s per round
and the medians of 2 replicas / 1 replica and Ray 1 replica / native.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ddgan.bench.serve import (
    REPO,
    closed_loop,
    free_port,
    machine,
    reduced_registry,
    spawned_server,
    table,
    wait_ready,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve-ray", help="Ray Serve engine: 2 vs 1 replica and Ray vs native `ddgan serve` (docs/benchmarks.md)"
    )
    parser.add_argument("--registry", type=Path, default=REPO / "models" / "registry.toml")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients of every run")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved native / 1 replica / 2 replicas rounds")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.set_defaults(handler=run, spawn=True, torch_threads=1, server_cpus=None)


def ray_registry(registry: Path, dataset: str, replicas: int, workdir: Path) -> Any:
    from ddgan.server.registry import Registry, ReplicaScaling, load_registry

    entries = [m for m in load_registry(reduced_registry(registry, dataset, workdir / "ray.toml")).models]
    scaling = ReplicaScaling(min_replicas=replicas, max_replicas=replicas, num_cpus=1, max_ongoing_requests=16)
    return Registry(models=[m.model_copy(update={"scaling": scaling}) for m in entries if m.sampler == "ddgan"])


def run(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve

        from ddgan.server.rayserve.app import build
    except ImportError as exc:
        raise SystemExit(f"ddgan bench serve-ray needs Ray Serve: pip install -e '.[ray]' ({exc})") from None
    from ddgan.server.settings import ServerSettings

    concurrency = args.concurrency
    port = free_port()
    body = {"dataset": args.dataset, "n": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        settings = ServerSettings(registry=args.registry, random_weights=args.random_weights, torch_threads=1)
        # /r1 and /r2 are deployed side by side (three one-CPU replicas): a host with fewer CPUs than that gets
        # enough logical ones to place them, and the output says the replicas share its cores.
        logical = max(3, os.cpu_count() or 1)
        if logical > (os.cpu_count() or 1):
            print(f"# note: {os.cpu_count()} CPUs for 3 one-CPU replicas: Ray is given {logical} logical CPUs, "
                  "so the replicas share cores and the 2-replica ratio is bounded by the host, not by Ray")  # fmt: skip
        ray.init(num_cpus=logical, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for replicas in (1, 2):
                application = build(settings, ray_registry(args.registry, args.dataset, replicas, workdir))
                serve.run(application, name=f"r{replicas}", route_prefix=f"/r{replicas}")
            ray_urls = {replicas: f"http://127.0.0.1:{port}/r{replicas}" for replicas in (1, 2)}
            with spawned_server(args, workdir) as native:
                for url in (native, *ray_urls.values()):
                    wait_ready(url)
                rows, rounds = [], []
                for index in range(1, args.rounds + 1):
                    runs = {
                        label: asyncio.run(
                            closed_loop(url, body, concurrency, args.duration, None, f"{label} #{index}")
                        )
                        for label, url in (
                            ("native", native),
                            ("ray 1 replica", ray_urls[1]),
                            ("ray 2 replicas", ray_urls[2]),
                        )
                    }
                    rows += list(runs.values())
                    rounds.append({label: run.images_per_s for label, run in runs.items()})
        finally:
            serve.shutdown()
            ray.shutdown()
    scaling = float(np.median([r["ray 2 replicas"] / r["ray 1 replica"] for r in rounds]))
    overhead = float(np.median([r["ray 1 replica"] / r["native"] for r in rounds]))
    print(f"# ddgan bench serve-ray: {args.dataset}, concurrency {concurrency}, n={args.n}, one thread each")
    print(f"machine: {machine()}\n")
    print(table(rows) + "\n")
    print(f"Ray 2 replicas / 1 replica, median of {len(rounds)} rounds: {scaling:.2f}x")
    print(f"Ray 1 replica / native server, median of {len(rounds)} rounds: {overhead:.0%}")
    if args.json:
        summary = {"two_over_one_replica": scaling, "ray_over_native": overhead, "rounds": rounds}
        args.json.write_text(json.dumps({"machine": machine(), "summary": summary}, indent=2))
    return 0
