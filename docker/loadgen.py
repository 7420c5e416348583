"""Steady open-loop load for the compose stack: a mix of DDGAN and DDPM-baseline requests for one dataset.

Each sampler gets its own arrival stream (Poisson by default) at its own rate, so slow DDPM requests never
throttle DDGAN arrivals, which is what lets the dashboard compare their latencies under a steady load. Every
option also reads a `LOADGEN_*` environment variable (the compose service sets those).

    python docker/loadgen.py --url http://127.0.0.1:8000 --dataset mnist --ddgan-rps 4 --ddpm-rps 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

logger = logging.getLogger("loadgen")


@dataclass
class StreamStats:
    """What one sampler's stream did: requests by outcome and the latencies of successful ones."""

    sent: int = 0
    skipped: int = 0  # arrivals dropped because the stream already had `max_in_flight` requests open
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if status.startswith("2"))

    def summary(self) -> dict[str, object]:
        latencies = sorted(self.latencies_s)
        quantiles = {}
        if len(latencies) >= 2:
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            quantiles = {"p50_s": cuts[49], "p95_s": cuts[94], "p99_s": cuts[98]}
        elif latencies:
            quantiles = {"p50_s": latencies[0], "p95_s": latencies[0], "p99_s": latencies[0]}
        return {"sent": self.sent, "ok": self.ok(), "skipped": self.skipped, "statuses": dict(self.statuses)} | (
            quantiles
        )


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LOADGEN_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=_env("URL", "http://server:8000"), help="server base URL")
    parser.add_argument("--dataset", default=_env("DATASET", "mnist"), help="dataset of both samplers")
    parser.add_argument("--ddgan-rps", type=float, default=float(_env("DDGAN_RPS", "4")), help="DDGAN requests/s")
    parser.add_argument("--ddpm-rps", type=float, default=float(_env("DDPM_RPS", "0.5")), help="DDPM requests/s")
    parser.add_argument("--n", type=int, default=int(_env("N", "4")), help="images per request")
    parser.add_argument(
        "--ddpm-steps", type=int, default=int(_env("DDPM_STEPS", "0")), help="DDPM `steps` (0: the model's default)"
    )
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default=_env("ARRIVALS", "poisson"))
    parser.add_argument("--duration", type=float, default=float(_env("DURATION", "0")), help="seconds (0: forever)")
    parser.add_argument("--max-in-flight", type=int, default=int(_env("MAX_IN_FLIGHT", "32")), help="per sampler")
    parser.add_argument("--timeout", type=float, default=float(_env("TIMEOUT", "300")), help="per request, seconds")
    parser.add_argument("--ready-timeout", type=float, default=float(_env("READY_TIMEOUT", "900")))
    parser.add_argument("--report-every", type=float, default=float(_env("REPORT_EVERY", "30")), help="seconds")
    parser.add_argument("--seed", type=int, default=int(_env("SEED", "0")), help="seeds arrivals and image seeds")
    parser.add_argument("--summary-json", default=_env("SUMMARY_JSON", ""), help="write the final summary here")
    parser.add_argument("--require-success", action="store_true", help="exit 1 unless every stream had a 2xx response")
    args = parser.parse_args(argv)
    if args.ddgan_rps < 0 or args.ddpm_rps < 0 or args.ddgan_rps + args.ddpm_rps == 0:
        parser.error("--ddgan-rps and --ddpm-rps must be >= 0 and not both 0")
    if args.n < 1 or args.max_in_flight < 1:
        parser.error("--n and --max-in-flight must be >= 1")
    args.api_key = os.environ.get("LOADGEN_API_KEY") or os.environ.get("DDGAN_API_KEY") or ""
    return args


async def wait_ready(client: httpx.AsyncClient, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = await client.get("/readyz")
            if response.is_success:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        await asyncio.sleep(1.0)
    raise SystemExit(f"loadgen: server not ready after {timeout_s:.0f} s ({last})")


async def one_request(client: httpx.AsyncClient, body: dict[str, object], stats: StreamStats) -> None:
    started = time.perf_counter()
    try:
        response = await client.post("/generate", json=body)
        status = str(response.status_code)
        if not response.is_success:
            logger.debug("%s %s: %s", body["sampler"], status, response.text[:200])
    except httpx.TimeoutException:
        status = "timeout"
    except httpx.TransportError as exc:
        status = type(exc).__name__
    stats.statuses[status] += 1
    if status.startswith("2"):
        stats.latencies_s.append(time.perf_counter() - started)


async def stream(
    client: httpx.AsyncClient, sampler: str, rate: float, args: argparse.Namespace, stats: StreamStats, stop: float
) -> None:
    """Fire requests at `rate` per second until `stop` (monotonic time), then wait for those still open."""
    rng = random.Random(f"{args.seed}-{sampler}")
    open_requests: set[asyncio.Task[None]] = set()
    next_arrival = time.monotonic()
    while time.monotonic() < stop:
        gap = rng.expovariate(rate) if args.arrivals == "poisson" else 1.0 / rate
        next_arrival += gap
        await asyncio.sleep(max(0.0, min(next_arrival, stop) - time.monotonic()))
        if time.monotonic() >= stop:
            break
        if len(open_requests) >= args.max_in_flight:
            stats.skipped += 1
            continue
        body: dict[str, object] = {
            "dataset": args.dataset,
            "sampler": sampler,
            "n": args.n,
            "seed": rng.randrange(2**31),
        }
        if sampler == "ddpm" and args.ddpm_steps > 0:
            body["steps"] = args.ddpm_steps
        stats.sent += 1
        task = asyncio.create_task(one_request(client, body, stats))
        open_requests.add(task)
        task.add_done_callback(open_requests.discard)
    if open_requests:
        await asyncio.gather(*open_requests)


async def report(streams: dict[str, StreamStats], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        for sampler, stats in streams.items():
            logger.info("%s: %s", sampler, json.dumps(stats.summary()))


async def run(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=2 * args.max_in_flight + 4)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=args.timeout, limits=limits) as client:
        await wait_ready(client, args.ready_timeout)
        rates = {"ddgan": args.ddgan_rps, "ddpm": args.ddpm_rps}
        streams = {sampler: StreamStats() for sampler, rate in rates.items() if rate > 0}
        stop = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        logger.info("load on %s (%s): %s, %d images per request", args.url, args.dataset, rates, args.n)
        reporter = asyncio.create_task(report(streams, args.report_every))
        try:
            await asyncio.gather(*(stream(client, s, rates[s], args, stats, stop) for s, stats in streams.items()))
        finally:
            reporter.cancel()
    return {sampler: stats.summary() for sampler, stats in streams.items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the reports
    args = parse_args(argv)
    try:
        summary = asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    text = json.dumps(summary, sort_keys=True)
    logger.info("summary: %s", text)
    if args.summary_json:
        with open(args.summary_json, "w") as file:
            file.write(text + "\n")
    if args.require_success and not all(s["ok"] for s in summary.values()):
        logger.error("a stream had no successful response")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
