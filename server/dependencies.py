"""FastAPI dependencies: the engine, the serving layer, the jobs, the settings, the metrics and the API key.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop (and a
GIL hand-off with the busy sampler thread) per dependency per request, and on a loaded core those hops cost more
than the request's own HTTP work.
"""

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
from ddgan.server.tickets import Priority


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


async def get_service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.service
    return service


async def get_metrics(request: Request) -> ServerMetrics:
    metrics: ServerMetrics = request.app.state.metrics
    return metrics


async def require_api_key(request: Request, settings: Annotated[ServerSettings, Depends(get_settings)]) -> None:
    """With `DDGAN_API_KEY` (or `DDGAN_KEY_PRIORITIES`) set, callers send `Authorization: Bearer <key>`
    (compared in constant time, against every key); a mapped key's priority goes to `request.state.key_priority`."""
    keys: dict[str, Priority] = {k: Priority(p) for k, p in settings.key_priorities.items()}
    if settings.api_key is not None:
        keys.setdefault(settings.api_key.get_secret_value(), Priority.INTERACTIVE)
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    matched = [priority for key, priority in keys.items() if secrets.compare_digest(given, key.encode())]
    if scheme.lower() == "bearer" and given and matched:
        request.state.key_priority = matched[0]
    else:
        raise APIError(
            401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip


async def job_owner(request: Request) -> str | None:
    """Who a job belongs to: the bearer token sent (checked by `require_api_key` where a key is set), digested."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return owner_of(token.strip()) if scheme.lower() == "bearer" else None


async def get_jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobs
    return jobs


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
MetricsDep = Annotated[ServerMetrics, Depends(get_metrics)]
ServiceDep = Annotated[GenerationService, Depends(get_service)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
JobOwner = Annotated[str | None, Depends(job_owner)]
ApiKey = Depends(require_api_key)
