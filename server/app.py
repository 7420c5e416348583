"""`create_app(settings)`: the FastAPI application factory (settings and registry are read here, not at import)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from ddgan.export.backends import register as register_backends
from ddgan.server.engine import Engine
from ddgan.server.errors import install_error_handlers
from ddgan.server.job_service import JobService
from ddgan.server.jobs import Clock, JobStore
from ddgan.server.metrics import UNKNOWN, ServerMetrics
from ddgan.server.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from ddgan.server.registry import Registry, load_registry
from ddgan.server.reload import RegistryReloader, install_sighup
from ddgan.server.routes import admin, generate, health, images, models, playground
from ddgan.server.routes import jobs as jobs_routes
from ddgan.server.runtime import LoadModel, Runtime
from ddgan.server.serving import GenerationService
from ddgan.server.settings import ServerSettings

logger = logging.getLogger(__name__)

# Builds the engine behind the routes: the in-process `Runtime` by default, `RayEngine` under Ray Serve.
EngineFactory = Callable[[ServerSettings, Registry, ServerMetrics], Engine]

DESCRIPTION = """Few-step image generation (DDGAN) with a DDPM baseline, dynamically batched per model.

`POST /generate {"dataset": "mnist", "n": 16, "seed": 7}` answers JSON with base64 PNGs, one PNG grid
(`Accept: image/png`) or a ZIP of PNGs (`Accept: application/zip`). Image `i` uses seed `seed + i` and is the
same whether it ran alone or batched with other requests. Every error has the shape
`{"error": {"type", "message", "status", "request_id", "details"}}`.
"""


def create_app(
    settings: ServerSettings | None = None,
    *,
    registry: Registry | None = None,
    load_model: LoadModel | None = None,
    engine_factory: EngineFactory | None = None,
    job_clock: Clock = time.time,
) -> FastAPI:
    """Build the app; `registry` defaults to `settings.registry`, `load_model` to `server.loader.load_entry`,
    the engine to the in-process `Runtime` (with `load_model`); `job_clock` is the async jobs' clock (TTL tests
    pass a fake one)."""
    settings = settings or ServerSettings()
    registry = registry or load_registry(settings.registry)
    if settings.model_names:
        registry = registry.only(settings.model_names)
    metrics = ServerMetrics()
    register_backends()
    engine: Engine
    if engine_factory is not None:
        engine = engine_factory(settings, registry, metrics)
    elif load_model is not None:
        engine = Runtime(settings, registry, metrics, load_model)
    else:
        engine = Runtime(settings, registry, metrics)
    service = GenerationService(engine, settings, metrics)
    job_store = JobStore(
        max_jobs=settings.jobs_max, ttl_s=settings.jobs_ttl_s, max_bytes=settings.jobs_max_bytes,
        metrics=metrics, clock=job_clock,
    )  # fmt: skip
    jobs = JobService(service, job_store, settings)
    # Hot reload swaps models inside this process; the Ray engine's models are redeployed by Ray instead.
    reloader = RegistryReloader(engine, settings.registry, metrics) if isinstance(engine, Runtime) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        on_sighup = install_sighup(reloader) if reloader is not None else None
        try:
            yield
        finally:
            # `ddgan serve` began the shutdown at SIGTERM (server/http_server.py): one deadline for everything.
            deadline = engine.begin_shutdown(time.monotonic() + settings.shutdown_timeout_s)
            logger.info("shutting down: finishing queued work (%.1f s left)", max(0.0, deadline - time.monotonic()))
            if on_sighup is not None and reloader is not None:
                on_sighup.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reloader.wait_idle(), max(0.0, deadline - time.monotonic()))
            await engine.stop()
            await jobs.stop(max(0.0, deadline - time.monotonic()))
            await service.stop(deadline)

    app = FastAPI(title="DDGAN inference server", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.service = service
    app.state.jobs = jobs
    app.state.reloader = reloader

    def count_rejected(path: str, status: int) -> None:
        # /generate requests refused before the handler ran (size, bad JSON, wrong types, auth) still count.
        if path == "/generate":
            metrics.observe_request(UNKNOWN, UNKNOWN, status, 0.0)

    app.state.count_rejected = count_rejected  # the HTTP layer's own refusals (server.http_server)

    def count_error(request: Request, status: int) -> None:
        if not getattr(request.state, "metrics_recorded", False):
            count_rejected(request.url.path, status)
            request.state.metrics_recorded = True

    def openapi() -> dict[str, Any]:
        # The schema states this server's limit of `n`, so a body it rejects with 422 is invalid under it.
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for name in ("GenerateRequest",):
                fields = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
                if "n" in fields:
                    fields["n"]["maximum"] = settings.max_images_per_request
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    install_error_handlers(app, on_error=count_error)
    app.include_router(generate.router)
    app.include_router(images.router)
    app.include_router(jobs_routes.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(playground.router)
    # Last added is outermost: the request context wraps the body limit, so a 413 also carries X-Request-ID.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_json_depth=settings.max_json_depth,
        on_rejected=count_rejected,
    )
    app.add_middleware(RequestContextMiddleware)
    return app
