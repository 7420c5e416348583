"""POST /generate: validate, queue the seeds on the model's batch queue, encode, answer by Accept."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ddgan.model.noise import image_seeds, random_seed
from ddgan.server.batching import (
    BatchFailedError,
    BatchQueue,
    DeadlineExceededError,
    Job,
    JobResult,
    QueueClosedError,
    QueueFullError,
)
from ddgan.server.dependencies import ApiKey, MetricsDep, RuntimeDep
from ddgan.server.encoding import JSON, PNG, ZIP, build_zip, encode_grid, encode_pngs, negotiate
from ddgan.server.errors import APIError
from ddgan.server.metrics import UNKNOWN
from ddgan.server.runtime import ModelState, Runtime, ServedModel
from ddgan.server.schemas import ErrorResponse, GenerateRequest, GenerateResponse, LatencyMs

router = APIRouter(tags=["generate"])

CLIENT_CLOSED = 499  # nginx's code for "client closed the request": only ever seen in metrics and logs


class ClientDisconnectedError(Exception):
    pass


def require_json_body(request: Request) -> None:
    content_type = request.headers.get("content-type")
    if content_type and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise APIError(415, "unsupported_media_type", f"send the request as application/json, not {content_type!r}")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 406, 413, 415, 422, 500, 503, 504)
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "content": {PNG: {}, ZIP: {}},
        "description": "JSON with base64 PNGs (default), one grid PNG (Accept: image/png) or a ZIP of PNGs "
        "(Accept: application/zip). Headers: X-Request-ID, Server-Timing, X-Seed, X-Image-Count, X-Weights.",
    },
}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=_RESPONSES,
    dependencies=[ApiKey, Depends(require_json_body)],
    summary="Generate n images of a dataset from a seed",
)
async def generate(body: GenerateRequest, request: Request, runtime: RuntimeDep, metrics: MetricsDep) -> Response:
    started = time.perf_counter()
    labels = (UNKNOWN, UNKNOWN)
    status = 200
    request.state.metrics_recorded = True
    try:
        media_type = negotiate(request.headers.get("accept"))
        served = _served_model(runtime, body)
        labels = (body.dataset, body.sampler)
        in_flight = metrics.in_flight.labels(*labels)
        in_flight.inc()
        runtime.requests_in_flight += 1
        try:
            return await _generate(request, body, served, runtime, media_type, started)
        finally:
            runtime.requests_in_flight -= 1
            in_flight.dec()
    except APIError as exc:
        status = exc.status
        raise
    except ClientDisconnectedError:
        status = CLIENT_CLOSED
        return Response(status_code=CLIENT_CLOSED)
    except Exception:  # a bug: the middleware answers 500 in the error shape
        status = 500
        raise
    finally:
        metrics.observe_request(*labels, status, time.perf_counter() - started)


def _served_model(runtime: Runtime, body: GenerateRequest) -> ServedModel:
    served = runtime.lookup(body.dataset, body.sampler)
    if served is None:
        known = sorted({f"{m.entry.dataset}/{m.entry.sampler}" for m in runtime.models.values()})
        raise APIError(404, "unknown_model", f"no model {body.dataset}/{body.sampler}; configured: {', '.join(known)}")
    if served.state is ModelState.NOT_INSTALLED:
        raise APIError(404, "model_not_installed", served.reason or f"{served.entry.name} is not installed")
    if served.state is not ModelState.READY or served.queue is None:
        reason = served.reason or served.state.value
        headers = {"Retry-After": "5"} if served.state in (ModelState.LOADING, ModelState.WARMING) else None
        raise APIError(503, "model_unavailable", f"{served.entry.name} is not ready: {reason}", headers=headers)
    if not runtime.accepting:
        raise APIError(503, "shutting_down", "the server is shutting down")
    return served


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "invalid_request", f"{field}: {message}", details=[{"field": field, "message": message,
                                                                             "type": "value_error"}])  # fmt: skip


def _request_steps(served: ServedModel, body: GenerateRequest) -> tuple[int | None, int]:
    """(steps handed to the queue, steps reported); DDGAN's steps are fixed by its training."""
    default = served.default_steps or 1
    if served.entry.sampler == "ddgan":
        if body.steps is not None and body.steps != default:
            raise _invalid("body.steps", f"applies to sampler 'ddpm' only; this DDGAN always runs its {default} steps")
        return None, default
    steps = body.steps or default
    if steps > served.max_steps:
        raise _invalid("body.steps", f"must be at most {served.max_steps} for {served.entry.name}")
    return steps, steps


async def _generate(
    request: Request, body: GenerateRequest, served: ServedModel, runtime: Runtime, media_type: str, started: float
) -> Response:
    settings, metrics = runtime.settings, runtime.metrics
    if body.n > settings.max_images_per_request:
        raise _invalid("body.n", f"must be between 1 and {settings.max_images_per_request}")
    if body.n > served.entry.max_queue_images:
        raise _invalid("body.n", f"must be at most {served.entry.max_queue_images} for {served.entry.name}")
    queue_steps, steps = _request_steps(served, body)
    seed = body.seed if body.seed is not None else random_seed()
    try:
        seeds = image_seeds(seed, body.n)
    except ValueError as exc:
        raise _invalid("body.seed", str(exc)) from None
    timeout_s = min(settings.request_timeout_s, body.timeout_s or math.inf)
    deadline = time.monotonic() + timeout_s
    queue = served.queue
    assert queue is not None
    try:
        job = queue.submit(seeds, queue_steps, deadline)
    except QueueFullError as exc:
        raise APIError(
            503,
            "overloaded",
            f"{served.entry.name} has {exc.queued_images} images queued (limit {served.entry.max_queue_images}); "
            f"retry in {exc.retry_after_s} s",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except QueueClosedError:
        raise APIError(503, "shutting_down", "the server is shutting down") from None
    result = await _wait_for_job(queue, job, request, deadline, timeout_s)

    encode_started = time.perf_counter()
    pool, workers, level = runtime.png_pool, settings.png_workers, settings.png_compress_level
    grid = await encode_grid(result.images, pool, level) if media_type == PNG else None
    pngs = await encode_pngs(result.images, pool, workers, level) if grid is None else []
    png_s = time.perf_counter() - encode_started
    metrics.png_encode.labels(body.dataset, body.sampler).observe(png_s)

    loaded = served.loaded
    assert loaded is not None
    channels, height, width = result.images.shape[3], result.images.shape[1], result.images.shape[2]
    latency = LatencyMs(
        queue=round(result.queue_s * 1000, 3),
        inference=round(result.inference_s * 1000, 3),
        png_encode=round(png_s * 1000, 3),
        total=round((time.perf_counter() - started) * 1000, 3),
    )
    request.state.server_timing = [
        ("queue", latency.queue),
        ("inference", latency.inference),
        ("png", latency.png_encode),
    ]
    headers = {
        "X-Model": body.dataset,
        "X-Sampler": body.sampler,
        "X-Steps": str(steps),
        "X-Seed": str(seed),
        "X-Image-Count": str(len(seeds)),
        "X-Weights": "random" if loaded.random_weights else "real",
    }
    payload = GenerateResponse(
        request_id=str(request.state.request_id),
        model=body.dataset,
        sampler=body.sampler,
        steps=steps,
        seed=seed,
        seeds=seeds,
        width=width,
        height=height,
        channels=channels,
        backend=loaded.backend,
        device=loaded.device,
        random_weights=loaded.random_weights,
        images=[],
        latency_ms=latency,
    )
    if grid is not None:
        return Response(grid, media_type=PNG, headers=headers)
    if media_type == ZIP:
        names = [f"{body.dataset}-{body.sampler}-seed{s}.png" for s in seeds]
        metadata = payload.model_dump(exclude={"images"})
        loop = asyncio.get_running_loop()
        archive = await loop.run_in_executor(pool, build_zip, pngs, names, metadata)
        filename = f"{body.dataset}-{body.sampler}-seed{seed}.zip"
        return Response(
            archive, media_type=ZIP, headers={**headers, "Content-Disposition": f'attachment; filename="{filename}"'}
        )
    assert media_type == JSON
    payload.images = [base64.b64encode(png).decode("ascii") for png in pngs]
    return JSONResponse(payload.model_dump(), headers=headers)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _wait_for_job(queue: BatchQueue, job: Job, request: Request, deadline: float, timeout_s: float) -> JobResult:
    watcher: asyncio.Future[Any] = asyncio.ensure_future(_client_gone(request))
    waiting: set[asyncio.Future[Any]] = {job.future, watcher}
    try:
        done, _ = await asyncio.wait(
            waiting, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if job.future.done():
        try:
            return job.future.result()
        except DeadlineExceededError:
            raise APIError(504, "deadline_exceeded", f"no result within {timeout_s:.3g} s") from None
        except BatchFailedError as exc:
            raise APIError(500, "generation_failed", f"the batch holding this request failed: {exc}") from None
        except QueueClosedError as exc:
            raise APIError(503, "shutting_down", str(exc)) from None
    # Give up: drop the images no batch has taken yet, and make any late result a no-op.
    queue.cancel(job)
    job.future.cancel()
    if watcher in done:
        raise ClientDisconnectedError
    raise APIError(504, "deadline_exceeded", f"no result within {timeout_s:.3g} s")
