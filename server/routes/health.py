"""Liveness, readiness and Prometheus metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ddgan.server.dependencies import EngineDep, MetricsDep, SettingsDep
from ddgan.server.schemas import Health, ModelReadiness, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
@router.head("/healthz", operation_id="healthz_head", summary="The process is alive")
async def healthz(engine: EngineDep) -> Health:
    return Health(status="ok", uptime_s=round(time.time() - engine.started_at, 3))


@router.head("/readyz", operation_id="readyz_head", summary="Readiness as a status code only")
@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "models still loading or warming, or shutting down"}},
    summary="Every model that can load is loaded and warmed up (DDGAN_READINESS=strict: and none failed)",
)
async def readyz(engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    models = [
        ModelReadiness(
            model=m.entry.name, dataset=m.entry.dataset, sampler=m.entry.sampler, state=m.state.value, reason=m.reason
        )
        for m in engine.handles()
    ]
    body = Readiness(
        ready=engine.ready,
        mode=settings.readiness,
        failed=[m for m in models if m.state == "failed"],
        models=models,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(engine: EngineDep, metrics: MetricsDep) -> Response:
    return Response(await engine.metrics_page(), media_type=metrics.content_type)
