"""Every dependency of every route is a coroutine: FastAPI runs a plain `def` dependency in its thread pool, a
thread hop per request that cost the loaded server about a fifth of its event loop (docs/benchmarks.md), and
that health probes would queue behind under overload."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute

from tests.server.conftest import make_app, write_registry


def dependency_calls(dependant: Any) -> Iterator[tuple[str, Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield getattr(dependency.call, "__qualname__", repr(dependency.call)), dependency.call
        yield from dependency_calls(dependency)


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's API routes, also inside included routers (FastAPI 0.16x keeps those as one wrapper route)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        router = getattr(route, "original_router", None)
        if router is not None:
            yield from api_routes(router.routes)


def test_no_route_depends_on_a_plain_function(tiny_models: Path) -> None:
    app = make_app(write_registry(tiny_models), admin_key="admin-secret")
    routes = list(api_routes(app.routes))
    calls = {name: call for route in routes for name, call in dependency_calls(route.dependant)}
    assert {"require_api_key", "require_json_body", "get_service", "owned_job"} <= set(calls)
    plain = sorted(name for name, call in calls.items() if not inspect.iscoroutinefunction(call))
    assert plain == []
