"""Liveness, readiness and Prometheus metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ddgan.server.dependencies import EngineDep, MetricsDep
from ddgan.server.schemas import Health, ModelReadiness, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz(engine: EngineDep) -> Health:
    return Health(status="ok", uptime_s=round(time.time() - engine.started_at, 3))


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a model is still loading or failed"}},
    summary="Every installed model is loaded and warmed up",
)
async def readyz(engine: EngineDep) -> JSONResponse:
    body = Readiness(
        ready=engine.ready,
        models=[ModelReadiness(model=m.entry.name, state=m.state.value, reason=m.reason) for m in engine.handles()],
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(engine: EngineDep, metrics: MetricsDep) -> Response:
    return Response(await engine.metrics_page(), media_type=metrics.content_type)
