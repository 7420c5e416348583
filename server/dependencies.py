"""FastAPI dependencies: the engine, the serving layer, the jobs, the settings, the metrics and the API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from ddgan.server.engine import Engine
from ddgan.server.errors import APIError
from ddgan.server.job_service import JobService, owner_of
from ddgan.server.metrics import ServerMetrics
from ddgan.server.serving import GenerationService
from ddgan.server.settings import ServerSettings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def get_service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.service
    return service


def get_metrics(request: Request) -> ServerMetrics:
    metrics: ServerMetrics = request.app.state.metrics
    return metrics


def require_api_key(request: Request, settings: Annotated[ServerSettings, Depends(get_settings)]) -> None:
    """With `DDGAN_API_KEY` set, callers send `Authorization: Bearer <key>` (compared in constant time)."""
    if settings.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value()
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(
            401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip


def job_owner(request: Request) -> str | None:
    """Who a job belongs to: the bearer token sent (checked by `require_api_key` where a key is set), digested."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return owner_of(token.strip()) if scheme.lower() == "bearer" else None


def get_jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobs
    return jobs


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
MetricsDep = Annotated[ServerMetrics, Depends(get_metrics)]
ServiceDep = Annotated[GenerationService, Depends(get_service)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
JobOwner = Annotated[str | None, Depends(job_owner)]
ApiKey = Depends(require_api_key)
