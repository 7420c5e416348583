"""Async jobs: POST /v1/jobs, GET /v1/jobs/{id}, its result and events, DELETE to cancel (server/job_service.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from ddgan.server.dependencies import ApiKey, JobOwner, JobsDep
from ddgan.server.encoding import PNG, ZIP, negotiate
from ddgan.server.errors import APIError
from ddgan.server.job_schemas import JobStatus
from ddgan.server.job_service import status_of
from ddgan.server.jobs import Job
from ddgan.server.routes.generate import require_json_body
from ddgan.server.schemas import ErrorResponse, GenerateRequest, GenerateResponse

router = APIRouter(tags=["jobs"], dependencies=[ApiKey])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in (401, *codes)}


async def owned_job(job_id: str, jobs: JobsDep, owner: JobOwner) -> Job:
    """The caller's job (a dependency: a 404 is answered before any response, the event stream's included)."""
    job = jobs.store.get(job_id, owner)
    if job is None:
        raise APIError(404, "job_not_found", f"no job {job_id} (unknown, expired, or made with another key)")
    return job


OwnedJob = Annotated[Job, Depends(owned_job)]


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobStatus,
    responses=_errors(400, 404, 413, 415, 422, 503),
    dependencies=[Depends(require_json_body)],
    summary="Queue a /generate body as an async job (Location: its status URL)",
)
async def submit_job(body: GenerateRequest, jobs: JobsDep, owner: JobOwner) -> JSONResponse:
    job = jobs.submit(body, owner)
    return JSONResponse(status_of(job).model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=_errors(404), summary="A job's state and progress")
async def get_job(job: OwnedJob) -> JobStatus:
    return status_of(job)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobStatus,
    responses=_errors(404),
    summary="Cancel a queued or running job; forget a finished one and its result",
)
async def cancel_job(job: OwnedJob, jobs: JobsDep) -> JobStatus:
    jobs.cancel(job)
    return status_of(job)


@router.get(
    "/v1/jobs/{job_id}/result",
    response_model=GenerateResponse,
    responses={
        **_errors(404, 406, 409),
        200: {"content": {PNG: {}, ZIP: {}}, "description": "the images, negotiated by Accept as /generate"},
    },
    summary="A succeeded job's images (JSON, PNG grid or ZIP, as /generate)",
)
async def job_result(job: OwnedJob, request: Request, jobs: JobsDep) -> Response:
    media_type = negotiate(request.headers.get("accept"))
    rendered = await jobs.result(job, media_type, str(request.state.request_id))
    request.state.server_timing = rendered.server_timing
    if isinstance(rendered.content, dict):
        return JSONResponse(rendered.content, headers=rendered.headers)
    return Response(rendered.content, media_type=rendered.media_type, headers=rendered.headers)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses=_errors(404),
    summary="Follow a job as server-sent events (`event: job`, JobStatus data; ends after a terminal state)",
)
async def job_events(job: OwnedJob, jobs: JobsDep) -> AsyncIterator[ServerSentEvent]:
    async for version, status in jobs.events(job):
        yield ServerSentEvent(data=status, event="job", id=str(version))
