"""`ddgan bench serve`: load-test the HTTP server and compare it with its own raw sampler, in one run.

An async httpx load generator runs closed-loop clients over a concurrency sweep and reports p50/p95/p99
latency and images/s; the same model's raw sampler is timed in-process at batch 1 and at the server's batch size;
serial single-image requests are compared with batched ones; DDGAN and DDPM per-request latency are compared for
the same dataset. `--spawn` starts `ddgan serve` itself on a free loopback port (with a registry reduced to the
benchmarked dataset); `--url` targets a running server (the raw-sampler rows then need `--registry`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LevelResult:
    label: str
    concurrency: int
    n: int
    requests: int
    errors: dict[str, int]
    seconds: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="load-test `ddgan serve` against its raw sampler (docs/benchmarks.md)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--spawn", action="store_true", help="start `ddgan serve` on a free loopback port")
    parser.add_argument("--registry", type=Path, default=REPO / "models" / "registry.toml")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--random-weights", action="store_true", help="spawned server and raw sampler: random weights")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated sweep")
    parser.add_argument("--n", type=int, default=1, help="images per request in the sweep")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per sweep level")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved server-vs-raw rounds at saturation")
    parser.add_argument("--ddpm-steps", type=int, help="DDPM steps for the DDGAN-vs-DDPM rows (default: its default)")
    parser.add_argument("--ddpm-requests", type=int, default=5, help="sequential requests per sampler for that row")
    parser.add_argument(
        "--threads",
        "--torch-threads",
        dest="torch_threads",
        type=int,
        help="torch threads of the spawned server and the raw sampler (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        help="CPUs (e.g. 0 or 0-1) of the spawned server and the raw sampler; with --client-cpus, the load "
        "generator no longer competes with the server for its cores, as when clients run on other hosts",
    )
    parser.add_argument("--client-cpus", type=cpu_list, help="CPUs of the load generator (e.g. 1)")
    parser.add_argument("--json", type=Path, help="also write all results as JSON")
    parser.set_defaults(handler=run)


# ----- the server -----
def cpu_list(text: str) -> set[int]:
    """`0`, `0,2` or `0-3` (the `taskset -c` syntax), checked against the CPUs this process may use."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list: {text!r} (e.g. 0 or 0,1 or 0-3)") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise argparse.ArgumentTypeError(f"CPUs {sorted(cpus)} are not a subset of this process's {sorted(allowed)}")
    return cpus


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this thread (and the threads it starts) on `cpus`; None leaves the affinity alone."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpus_text(cpus: set[int] | None) -> str:
    return "unpinned" if cpus is None else ",".join(map(str, sorted(cpus)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def reduced_registry(registry: Path, dataset: str, out: Path) -> Path:
    """The registry's entries for one dataset, with absolute paths, so the spawned server loads nothing else."""
    from ddgan.server.registry import load_registry

    entries = [m for m in load_registry(registry).models if m.dataset == dataset]
    if not entries:
        raise SystemExit(f"{registry} has no model for dataset {dataset!r}")
    lines = []
    for entry in entries:
        data = entry.model_dump(exclude_none=True)
        data["path"] = str(entry.path)
        lines.append("[[models]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in data.items()]
    out.write_text("\n".join(lines) + "\n")
    return out


@contextlib.contextmanager
def spawned_server(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    port = free_port()
    registry = reduced_registry(args.registry, args.dataset, workdir / "registry.toml")
    command = [sys.executable, "-m", "ddgan", "serve", "--registry", str(registry), "--port", str(port)]
    if args.random_weights:
        command.append("--random-weights")
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    log = workdir / "ddgan.server.log"
    # The child inherits the affinity at fork, before its interpreter starts any thread.
    with pinned(args.server_cpus):
        process = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    give_up = time.monotonic() + 600
    while time.monotonic() < give_up:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}:\n{log.read_text() if log else ''}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after 600 s")


# ----- load generation -----
def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    if not latencies:
        return (float("nan"), float("nan"), float("nan"))
    p50, p95, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


async def closed_loop(
    url: str, body: dict[str, Any], concurrency: int, duration: float | None, requests: int | None, label: str
) -> LevelResult:
    """`concurrency` clients each send a request as soon as their previous one answered."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        stop_at = started + duration if duration else float("inf")
        budget = [requests if requests is not None else -1]

        async def client_loop() -> None:
            while time.perf_counter() < stop_at and budget[0] != 0:
                budget[0] -= 1
                payload = {**body, "seed": random.randrange(2**31)}
                sent = time.perf_counter()
                response = await client.post("/generate", json=payload)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    statuses[str(response.status_code)] += 1

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    p50, p95, p99 = percentiles(latencies)
    n = int(body.get("n", 1))
    return LevelResult(
        label, concurrency, n, len(latencies), dict(statuses), seconds, len(latencies) * n / seconds, p50, p95, p99
    )


# ----- the raw sampler -----
def load_raw_sampler(registry: Path, dataset: str, random_weights: bool) -> Any:
    """The server's own DDGAN sampler for `dataset`, loaded in this process (no HTTP, no PNG)."""
    from ddgan.server.loader import load_entry
    from ddgan.server.registry import load_registry

    entry = load_registry(registry).get(dataset, "ddgan")
    if entry is None:
        raise SystemExit(f"{registry} has no ddgan model for {dataset!r}")
    return load_entry(entry, random_weights=random_weights)


def raw_sampler_rates(sampler: Any, batch_sizes: list[int], seconds: float = 3.0) -> dict[int, float]:
    """Images/s of `sampler.sample` per batch size (at least `seconds` and 3 batches each)."""
    rates = {}
    for batch in batch_sizes:
        sampler.sample(list(range(batch)))  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or done < 3 * batch:
            sampler.sample([random.randrange(2**31) for _ in range(batch)])
            done += batch
        rates[batch] = done / (time.perf_counter() - started)
    return rates


def png_pool_rates(images: np.ndarray, workers: list[int], count: int = 512) -> dict[int, float]:
    """PNG images/s of the server's encoder on 1..k pool threads (PIL releases the GIL inside zlib)."""
    from concurrent.futures import ThreadPoolExecutor

    from ddgan.server.encoding import encode_pngs

    batch = np.concatenate([images] * (count // len(images) + 1))[:count]
    rates = {}
    for threads in workers:
        with ThreadPoolExecutor(threads) as pool:
            asyncio.run(encode_pngs(batch[:threads], pool, threads, 1))
            started = time.perf_counter()
            asyncio.run(encode_pngs(batch, pool, threads, 1))
            rates[threads] = count / (time.perf_counter() - started)
    return rates


def model_info(url: str, dataset: str) -> dict[str, dict[str, Any]]:
    models = httpx.get(url + "/v1/models", timeout=30).json()["models"]
    return {m["sampler"]: m for m in models if m["dataset"] == dataset and m["ready"]}


# ----- report -----
def machine() -> str:
    import torch

    from ddgan.bench.sampler import machine_description

    return machine_description(torch.device("cpu"))


def table(rows: list[LevelResult]) -> str:
    lines = [
        "| run | concurrency | n | requests | images/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "-"
        lines.append(
            f"| {r.label} | {r.concurrency} | {r.n} | {r.requests} | {r.images_per_s:.1f} | {r.p50_ms:.1f} | "
            f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {errors} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the report
    from ddgan.model.threads import set_threads

    if args.server_cpus is not None and args.torch_threads is None:
        args.torch_threads = len(args.server_cpus)  # the server's own default inside its mask; the raw sampler's too
    set_threads(args.torch_threads)
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as workdir:
        context = spawned_server(args, Path(workdir)) if args.spawn else contextlib.nullcontext(args.url)
        with context as url:
            wait_ready(url)
            return report(args, url, levels)


def report(args: argparse.Namespace, url: str, levels: list[int]) -> int:
    models = model_info(url, args.dataset)
    if "ddgan" not in models:
        raise SystemExit(f"{url} serves no ready ddgan model for {args.dataset!r}")
    max_batch = int(models["ddgan"]["max_batch_images"])
    body = {"dataset": args.dataset, "n": args.n}
    print(
        f"# ddgan bench serve: {args.dataset}, {models['ddgan']['weights']} weights, max_batch_images={max_batch}, "
        f"micro_batch={models['ddgan'].get('micro_batch')} ({models['ddgan'].get('micro_batch_choice')}); "
        f"warm-up ms/image by batch size: {models['ddgan'].get('warmup_ms_per_image')}"
    )
    print(f"machine: {machine()}")
    print(f"CPUs: server and raw sampler {cpus_text(args.server_cpus)}, load generator {cpus_text(args.client_cpus)}\n")

    def raw_rates(sampler: Any, batch_sizes: list[int], seconds: float = 3.0) -> dict[int, float]:
        with pinned(args.server_cpus):
            return raw_sampler_rates(sampler, batch_sizes, seconds)

    def load(*closed_loop_args: Any) -> LevelResult:
        with pinned(args.client_cpus):
            return asyncio.run(closed_loop(*closed_loop_args))

    # The raw sampler runs before and after the HTTP runs: on a shared machine the mean of both is the fair base.
    from ddgan.model.images import to_uint8

    sampler = load_raw_sampler(args.registry, args.dataset, args.random_weights)
    batches = sorted({1, max_batch})
    raw_before = raw_rates(sampler, batches)
    sweep = [load(url, body, c, args.duration, None, "sweep") for c in levels]
    print(table(sweep) + "\n")
    serial = load(url, {**body, "n": 1}, 1, args.duration, None, "serial n=1")
    batched_n = load(url, {**body, "n": max_batch}, 1, args.duration, None, f"one n={max_batch}")
    saturated = max(sweep, key=lambda r: r.images_per_s)
    raw_after = raw_rates(sampler, batches)
    raw = {b: (raw_before[b] + raw_after[b]) / 2 for b in batches}
    # Server at saturation (the sweep's highest concurrency: the most images in flight) vs the raw sampler,
    # interleaved in short rounds so that load drifts on a shared machine hit both alike.
    rounds = []
    busiest = max(levels)
    for _ in range(args.rounds):
        raw_rate = raw_rates(sampler, [max_batch], seconds=args.duration / 2)[max_batch]
        level = load(url, body, busiest, args.duration / 2, None, "round")
        rounds.append((level.images_per_s, raw_rate))

    print(
        "| raw sampler (in-process, no HTTP/PNG) | batch | images/s before | after | mean |\n|---|---:|---:|---:|---:|"
    )
    for batch in batches:
        print(f"| sampler.sample | {batch} | {raw_before[batch]:.1f} | {raw_after[batch]:.1f} | {raw[batch]:.1f} |")
    images = to_uint8(sampler.sample(list(range(max_batch))))
    png = png_pool_rates(images, [1, 2, 4])
    print("\n| PNG encoding (server encoder, level 1) | pool threads | images/s |\n|---|---:|---:|")
    for threads, rate in png.items():
        print(f"| encode_pngs {images.shape[1]}x{images.shape[2]}x{images.shape[3]} | {threads} | {rate:.0f} |")
    header = f"server images/s (concurrency {busiest}, n={args.n}) | raw images/s (batch {max_batch})"
    print(f"\n| round | {header} | ratio |")
    print("|---:|---:|---:|---:|")
    for index, (server_rate, raw_rate) in enumerate(rounds, start=1):
        print(f"| {index} | {server_rate:.1f} | {raw_rate:.1f} | {server_rate / raw_rate:.0%} |")
    summary = {
        "server_saturated_images_per_s": saturated.images_per_s,
        "raw_images_per_s_at_max_batch": raw[max_batch],
        "server_over_raw_median": float(np.median([server / raw_rate for server, raw_rate in rounds])),
        "batched_over_serial": saturated.images_per_s / serial.images_per_s,
        # A lone one-image request, end to end, against one raw batch-1 sampler call (no HTTP, no PNG).
        "one_image_p50_over_raw_batch1": serial.p50_ms / (1000 / raw[1]),
        "raw_batch_scaling": raw[max_batch] / raw[1],
    }
    print(
        f"\nserver at saturation vs raw sampler at batch {max_batch}, median of {len(rounds)} interleaved rounds: "
        f"{summary['server_over_raw_median']:.0%}\n"
        f"one-image request p50 {serial.p50_ms:.1f} ms vs the raw sampler at batch 1 {1000 / raw[1]:.1f} ms: "
        f"{summary['one_image_p50_over_raw_batch1']:.2f}x\n"
        f"batched vs serial single-image requests: {summary['batched_over_serial']:.2f}x "
        f"(the raw sampler's batch-{max_batch}/batch-1 scaling allows {summary['raw_batch_scaling']:.2f}x)\n"
    )

    comparison = [serial, batched_n]
    if "ddpm" in models:
        ddpm_body: dict[str, Any] = {"dataset": args.dataset, "sampler": "ddpm", "n": 1}
        if args.ddpm_steps:
            ddpm_body["steps"] = args.ddpm_steps
        steps = args.ddpm_steps or models["ddpm"]["steps"]
        ddgan_row = load(url, {**body, "n": 1}, 1, None, args.ddpm_requests, "ddgan n=1")
        ddgan_row.label = f"ddgan ({models['ddgan']['steps']} steps) n=1"
        ddpm_row = load(url, ddpm_body, 1, None, args.ddpm_requests, "ddpm")
        ddpm_row.label = f"ddpm ({steps} steps) n=1"
        comparison += [ddgan_row, ddpm_row]
        summary["ddpm_over_ddgan_p50"] = ddpm_row.p50_ms / ddgan_row.p50_ms
        print(table(comparison) + "\n")
        print(f"DDPM / DDGAN per-request p50 latency: {summary['ddpm_over_ddgan_p50']:.0f}x")
    else:
        print(table(comparison) + "\n\n(no ready ddpm model for this dataset: DDGAN vs DDPM skipped)")
    if args.json:
        results: dict[str, Any] = {"machine": machine(), "rows": [asdict(r) for r in sweep + comparison]}
        results.update(server_cpus=cpus_text(args.server_cpus), client_cpus=cpus_text(args.client_cpus))
        results.update(summary=summary, raw=raw, raw_before=raw_before, raw_after=raw_after, png=png, rounds=rounds)
        args.json.write_text(json.dumps(results, indent=2))
    return 0
