"""docker/grafana/: the dashboard JSON and provisioning, checked against what the server really exports.

The metric names come from a real /metrics scrape of the server app (not from a list kept here), and every
query is parsed by promtool; test_live_stack.py then runs every query against a live Prometheus.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy import promql

SERVER_LABELS = {"model", "sampler", "status", "backend", "device", "weights"}


@pytest.fixture(scope="module")
def board() -> dict:
    return promql.dashboard()


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Series names on the app's /metrics page (a registry of two models; nothing needs to load for this)."""
    from ddgan.server.app import create_app
    from ddgan.server.registry import parse_registry
    from ddgan.server.settings import ServerSettings

    models = [{"dataset": "mnist", "sampler": "ddgan", "path": "mnist"}]
    models.append({"dataset": "mnist", "sampler": "ddpm", "path": "mnist-ddpm"})
    registry = parse_registry({"models": models}, Path("/nonexistent"))
    app = create_app(ServerSettings(warmup=False), registry=registry)

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            return response.text

    names = promql.exported_names(asyncio.run(scrape()))
    assert "ddgan_request_latency_seconds_bucket" in names  # the scrape really came from the server
    return names


def test_dashboard_identity_and_datasource(board: dict) -> None:
    datasource = yaml.safe_load(promql.DATASOURCES.read_text())["datasources"][0]
    assert board["uid"] == "ddgan-serving" and board["title"]
    uids = {p["datasource"]["uid"] for p in promql.panels(board) if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in promql.panels(board) for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    ids = [p["id"] for p in promql.panels(board)]
    assert len(ids) == len(set(ids))


def test_panels_tile_the_grid_without_overlap(board: dict) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in promql.panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_metrics_the_server_exports(board: dict, exported: set[str]) -> None:
    rules = promql.recording_rules()
    queries = promql.panel_queries(board)
    assert queries
    for query in queries:
        names = promql.metric_names(query.expr)
        assert names, f"{query.panel}: no metric in {query.expr}"
        unknown = {n for n in names if not promql.resolve_to_exported(n, rules, exported)}
        assert not unknown, f"{query.panel} [{query.ref_id}]: {unknown} is neither exported nor recorded"


def test_every_recording_rule_resolves_to_exported_metrics(exported: set[str]) -> None:
    rules = promql.recording_rules()
    for record in rules:
        assert promql.resolve_to_exported(record, rules, exported), record


def test_dashboard_covers_the_required_views(board: dict) -> None:
    by_panel: dict[str, set[str]] = {}
    for query in promql.panel_queries(board):
        by_panel.setdefault(query.panel, set()).update(promql.metric_names(query.expr))
    exprs = {q.panel: [] for q in promql.panel_queries(board)}
    for query in promql.panel_queries(board):
        exprs[query.panel].append(query.expr)

    def panels_using(fragment: str) -> list[str]:
        return [title for title, names in by_panel.items() if any(fragment in n for n in names)]

    for quantile in ("p50", "p95", "p99"):
        latency = panels_using(f"ddgan_request_latency_seconds:{quantile}_1m")
        assert len(latency) >= 3  # DDGAN, DDPM side by side, and both together
        assert panels_using(f"{quantile}_ratio_ddpm_ddgan")
    p50_exprs = [e for title in panels_using(":p50_1m") for e in exprs[title]]
    sampler_filters = {s for e in p50_exprs for s in re.findall(r'sampler="(\w+)"', e)}
    assert sampler_filters == {"ddgan", "ddpm"}
    assert panels_using("ddgan_images_generated_total")
    assert panels_using("ddgan_batch_size_images_bucket") and panels_using("ddgan_batch_size_images_sum")
    queue_vs_inference = {
        "model_sampler:ddgan_queue_wait_seconds:p95_1m",
        "model_sampler:ddgan_batch_inference_seconds:p95_1m",
    }
    assert any(queue_vs_inference <= names for names in by_panel.values())
    assert panels_using("ddgan_requests_in_flight") and panels_using("ddgan_queued_images")
    assert any('status="503"' in e for title in panels_using("ddgan_requests_total") for e in exprs[title])
    info = [p for p in promql.panels(board) if p["type"] == "table"]
    assert info and "ddgan_model_info" in info[0]["targets"][0]["expr"]
    assert {"backend", "device", "weights"} <= set(info[0]["transformations"][0]["options"]["indexByName"])


def test_legends_use_labels_the_server_sets(board: dict) -> None:
    for query in promql.panel_queries(board):
        labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", query.legend))
        assert labels <= SERVER_LABELS | {"le"}, (query.panel, labels)


def test_model_variable(board: dict) -> None:
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "model" and variable["definition"] == "label_values(ddgan_model_info, model)"
    assert variable["includeAll"] and variable["allValue"] == ".*"
    assert all("$model" in q.expr for q in promql.panel_queries(board))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)")
def test_every_query_is_valid_promql(board: dict, tmp_path: Path) -> None:
    # promtool parses every expression of a rule file: wrap each dashboard query as a recording rule.
    queries = promql.panel_queries(board)
    rules = [{"record": f"dashboard:query:{i}", "expr": promql.substitute(q.expr, "1m")} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files(board: dict) -> None:
    datasource = yaml.safe_load(promql.DATASOURCES.read_text())
    (source,) = datasource["datasources"]
    assert source["isDefault"] and source["access"] == "proxy"
    scrape_interval = yaml.safe_load(promql.PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape_interval  # $__rate_interval needs the real interval
    provider_file = promql.DOCKER / "grafana" / "provisioning" / "dashboards" / "ddgan.yml"
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
