"""The observability stack end to end: a real `ddgan serve`, the Debian Prometheus scraping it with the stack's
recording rules, the compose load generator driving DDGAN + DDPM traffic, then every dashboard query.

One module-scoped stack (~30 s on 2 idle cores, most of it process start-up and warm-up) serves all tests here.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time

import httpx
import pytest

from tests.deploy import live, promql

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(live.prometheus_binary() is None, reason="needs the prometheus binary (Debian package)"),
]

RATE_WINDOW = "5m"  # what $__rate_interval stands for here: covers the whole short load even on a slow machine
LOAD_SECONDS = 6
IMAGES_PER_REQUEST = 2
OVERLOAD_REQUESTS = 6  # DDPM requests of 4 images at once against a queue bound of 8 images
OVERLOAD_STEPS = 50


async def _overload(url: str) -> list[httpx.Response]:
    body = {"dataset": live.DATASET, "sampler": "ddpm", "n": 4, "steps": OVERLOAD_STEPS}
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        requests = [client.post("/generate", json={**body, "seed": i}) for i in range(OVERLOAD_REQUESTS)]
        return list(await asyncio.gather(*requests))


def _scraped_requests(prometheus_url: str) -> float:
    result = live.query(prometheus_url, f'sum(ddgan_requests_total{{model="{live.DATASET}"}})')
    return float(result[0]["value"][1]) if result else 0.0


def _wait_for_final_scrape(prometheus_url: str, requests: int, timeout_s: float = 20.0) -> None:
    """Until Prometheus has scraped every request the clients made, then two more 1 s rule evaluations."""
    deadline = time.monotonic() + timeout_s
    while _scraped_requests(prometheus_url) < requests and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2.5)


def _by_sampler(prometheus_url: str, expr: str) -> dict[str, float]:
    return {r["metric"]["sampler"]: float(r["value"][1]) for r in live.query(prometheus_url, expr)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stack")
    registry = live.build_tiny_models(root / "models")
    with (
        live.ddgan_serve(registry, root) as server_url,
        live.prometheus(server_url.removeprefix("http://"), root) as prometheus_url,
    ):
        summary_path = root / "loadgen.json"
        loadgen = subprocess.run(
            [sys.executable, str(promql.DOCKER / "loadgen.py"), "--url", server_url, "--dataset", live.DATASET]
            + ["--ddgan-rps", "6", "--ddpm-rps", "2", "--n", str(IMAGES_PER_REQUEST)]
            + ["--duration", str(LOAD_SECONDS), "--report-every", "60", "--ready-timeout", "30"]
            + ["--require-success", "--summary-json", str(summary_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loadgen.returncode == 0, loadgen.stdout + loadgen.stderr
        summary = json.loads(summary_path.read_text())
        overload = asyncio.run(_overload(server_url))
        sent = sum(stream["sent"] for stream in summary.values()) + len(overload)
        _wait_for_final_scrape(prometheus_url, sent)
        yield {"server": server_url, "prometheus": prometheus_url, "summary": summary, "overload": overload}


def test_loadgen_sends_both_samplers_and_prometheus_counts_every_request(stack) -> None:
    summary, overload = stack["summary"], stack["overload"]
    assert summary["ddgan"]["ok"] >= LOAD_SECONDS and summary["ddpm"]["ok"] >= 1, summary
    assert all(set(s["statuses"]) == {"200"} for s in summary.values()), summary
    overload_ok = sum(r.status_code == 200 for r in overload)
    expected = {"ddgan": float(summary["ddgan"]["ok"]), "ddpm": float(summary["ddpm"]["ok"] + overload_ok)}
    # The server's own counters, as the real Prometheus scraped them, match what the clients saw.
    expr = f'sum by (sampler) (ddgan_requests_total{{model="{live.DATASET}", status="200"}})'
    assert _by_sampler(stack["prometheus"], expr) == expected
    images = {
        "ddgan": expected["ddgan"] * IMAGES_PER_REQUEST,
        "ddpm": summary["ddpm"]["ok"] * IMAGES_PER_REQUEST + overload_ok * 4,
    }
    expr = f'sum by (sampler) (ddgan_images_generated_total{{model="{live.DATASET}"}})'
    assert _by_sampler(stack["prometheus"], expr) == images


def test_overload_gets_503_with_retry_after(stack) -> None:
    statuses = [r.status_code for r in stack["overload"]]
    assert 503 in statuses and 200 in statuses, statuses
    assert all(int(r.headers["Retry-After"]) >= 1 for r in stack["overload"] if r.status_code == 503)
    expected = {"ddgan": 0.0, "ddpm": float(statuses.count(503))}  # exported at 0 from start-up
    expr = f'sum by (sampler) (ddgan_requests_total{{model="{live.DATASET}", status="503"}})'
    assert _by_sampler(stack["prometheus"], expr) == expected


@pytest.fixture(scope="module")
def panel_results(stack) -> dict[tuple[str, str], list[dict]]:
    """Every dashboard query as Grafana would send it (all models selected), answered by the live Prometheus."""
    return {
        (q.panel, q.ref_id): live.query(stack["prometheus"], promql.substitute(q.expr, RATE_WINDOW))
        for q in promql.panel_queries(promql.dashboard())
    }


def test_every_dashboard_query_returns_data(panel_results) -> None:
    empty = [f"{panel} [{ref}]" for (panel, ref), result in panel_results.items() if not result]
    assert not empty, f"panels without data: {empty}"


def test_latency_panel_shows_ddgan_and_ddpm_quantiles(panel_results) -> None:
    panel = "Request latency p50 / p95 / p99: DDGAN and DDPM together (log scale)"
    per_quantile = {}
    for ref in ("A", "B", "C"):  # p50, p95, p99
        series = {r["metric"]["sampler"]: float(r["value"][1]) for r in panel_results[(panel, ref)]}
        assert set(series) == {"ddgan", "ddpm"}, (ref, series)
        assert all(math.isfinite(v) and 0 < v < 300 for v in series.values()), (ref, series)
        per_quantile[ref] = series
    for sampler in ("ddgan", "ddpm"):  # quantiles of one histogram are ordered
        assert per_quantile["A"][sampler] <= per_quantile["B"][sampler] <= per_quantile["C"][sampler]
    ratio = panel_results[("Latency ratio DDPM / DDGAN", "A")]
    assert len(ratio) == 1 and ratio[0]["metric"]["model"] == live.DATASET
    expected_ratio = per_quantile["A"]["ddpm"] / per_quantile["A"]["ddgan"]
    assert float(ratio[0]["value"][1]) == pytest.approx(expected_ratio, rel=0.5)  # rules may be 1 evaluation apart


def test_error_panel_shows_the_overload_503s(panel_results) -> None:
    series = panel_results[("Errors and rejections per second", "A")]
    by_sampler = {r["metric"]["sampler"]: float(r["value"][1]) for r in series}
    assert by_sampler["ddpm"] > 0, by_sampler
    assert by_sampler["ddgan"] == 0, by_sampler  # zero-filled, not missing


def test_model_info_table_and_model_variable(stack, panel_results) -> None:
    rows = [r["metric"] for r in panel_results[("Models: backend, device, weights", "A")]]
    assert sorted((r["model"], r["sampler"], r["backend"], r["device"], r["weights"]) for r in rows) == [
        (live.DATASET, "ddgan", "torch", "cpu", "real"),
        (live.DATASET, "ddpm", "torch", "cpu", "real"),
    ]
    assert float(panel_results[("Models serving random weights", "A")][0]["value"][1]) == 0
    # The dashboard's $model variable: label_values(ddgan_model_info, model).
    response = httpx.get(
        f"{stack['prometheus']}/api/v1/label/model/values", params={"match[]": "ddgan_model_info"}, timeout=10
    )
    assert response.json()["data"] == [live.DATASET]


def test_batch_size_panels_reflect_the_registry_limits(panel_results) -> None:
    mean = {
        r["metric"]["sampler"]: float(r["value"][1]) for r in panel_results[("Mean batch size (images per batch)", "A")]
    }
    assert 1 <= mean["ddgan"] <= 8 and 1 <= mean["ddpm"] <= 4, mean  # max_batch_images of the tiny registry
    buckets = panel_results[("Batch size distribution: DDPM", "A")]
    counts = {float(r["metric"]["le"]): float(r["value"][1]) for r in buckets}
    assert counts[4.0] == counts[math.inf] > 0, counts  # no DDPM batch above max_batch_images = 4
