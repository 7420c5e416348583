"""The serving layer: a validated /generate request in, encoded images plus timings out.

Routes validate the body and negotiate the media type; `GenerationService.generate` does the rest: finds the
model, checks the request against what its sampler runs (`SamplerInfo.check_steps`, the one place steps are
validated), queues the images on the model's batch queue, waits (deadline, client disconnect), encodes the
PNGs on the pool, and records the request in the metrics. It owns the one in-flight count and the PNG pool.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ddgan.model.noise import image_seeds, random_seed
from ddgan.model.sampler import SamplerInfo, StepsError
from ddgan.server.batching import BatchFailedError, DeadlineExceededError, QueueClosedError, QueueFullError
from ddgan.server.encoding import JSON, PNG, ZIP, build_zip, encode_grid, encode_pngs
from ddgan.server.engine import ClientGoneError, Engine, Generated, ModelHandle, ModelState
from ddgan.server.errors import APIError
from ddgan.server.metrics import UNKNOWN, ServerMetrics
from ddgan.server.schemas import GenerateRequest, GenerateResponse, LatencyMs
from ddgan.server.settings import ServerSettings

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's code for "client closed the request": only ever seen in metrics and logs


@dataclass(frozen=True)
class Rendered:
    """An encoded answer: bytes (PNG grid, ZIP) or a JSON-able dict, with its headers and timings."""

    media_type: str
    content: bytes | dict[str, Any]
    headers: dict[str, str]
    server_timing: list[tuple[str, float]]


@dataclass(frozen=True)
class Admitted:
    """A request checked against its model: what to queue."""

    model: ModelHandle
    info: SamplerInfo
    seeds: list[int]
    steps: int
    seed: int


def invalid(field: str, message: str) -> APIError:
    """A 422: the body breaks the OpenAPI schema (which carries the server's limits, e.g. n's maximum)."""
    detail = {"field": field, "message": message, "type": "value_error"}
    return APIError(422, "invalid_request", f"{field}: {message}", details=[detail])


def unsupported(field: str, message: str) -> APIError:
    """A 400: valid under the schema, but the chosen model cannot run it (the schema cannot say per model)."""
    detail = {"field": field, "message": message, "type": "unsupported_by_model"}
    return APIError(400, "unsupported_by_model", f"{field}: {message}", details=[detail])


class GenerationService:
    def __init__(self, engine: Engine, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.png_pool = ThreadPoolExecutor(settings.png_workers, thread_name_prefix="png")
        self.in_flight = 0  # /generate requests past validation (event-loop side only)

    async def stop(self, deadline: float) -> None:
        """Requests whose images are done still encode them on the pool: let them finish until `deadline`."""
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.png_pool.shutdown(wait=False, cancel_futures=True)

    async def generate(
        self, body: GenerateRequest, media_type: str, request_id: str, client_gone: Callable[[], Awaitable[Any]]
    ) -> Rendered:
        """Generate and encode; raises APIError (answered in the error shape) or ClientGoneError."""
        started = time.perf_counter()
        labels = (UNKNOWN, UNKNOWN)
        status = 200
        try:
            served = self._served_model(body)
            labels = (body.dataset, body.sampler)
            self.in_flight += 1
            self.metrics.in_flight_changed(*labels, 1)
            try:
                return await self._generate(body, served, media_type, request_id, client_gone, started)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight_changed(*labels, -1)
        except APIError as exc:
            status = exc.status
            raise
        except ClientGoneError:
            status = CLIENT_CLOSED
            raise
        except Exception:  # a bug: the middleware answers 500 in the error shape
            status = 500
            raise
        finally:
            self.metrics.observe_request(*labels, status, time.perf_counter() - started)

    def admit(self, body: GenerateRequest) -> Admitted:
        """The model and checked seeds/steps of a request (an async job's), or the APIError /generate answers."""
        served = self._served_model(body)
        info = served.info
        assert info is not None
        seeds, steps, seed = self._check(body, served, info)
        return Admitted(served, info, seeds, steps, seed)

    def _served_model(self, body: GenerateRequest) -> ModelHandle:
        engine = self.engine
        served = engine.lookup(body.dataset, body.sampler)
        if served is None:
            known = sorted({f"{m.entry.dataset}/{m.entry.sampler}" for m in engine.handles()})
            message = f"no model {body.dataset}/{body.sampler}; configured: {', '.join(known)}"
            raise APIError(404, "unknown_model", message)
        if served.state is ModelState.NOT_INSTALLED:
            raise APIError(404, "model_not_installed", served.reason or f"{served.entry.name} is not installed")
        if served.state is not ModelState.READY or served.info is None:
            reason = served.reason or served.state.value
            headers = {"Retry-After": "5"} if served.state in (ModelState.LOADING, ModelState.WARMING) else None
            raise APIError(503, "model_unavailable", f"{served.entry.name} is not ready: {reason}", headers=headers)
        if not engine.accepting:
            raise APIError(503, "shutting_down", "the server is shutting down")
        return served

    def _check(self, body: GenerateRequest, served: ModelHandle, info: SamplerInfo) -> tuple[list[int], int, int]:
        """(seeds, steps, seed) of a request, or a 422 / 400 naming the field."""
        if body.n > self.settings.max_images_per_request:
            raise invalid("body.n", f"must be between 1 and {self.settings.max_images_per_request}")
        if body.n > served.entry.max_queue_images:
            raise unsupported("body.n", f"must be at most {served.entry.max_queue_images} for {served.entry.name}")
        try:
            steps = info.check_steps(body.steps)
        except StepsError as exc:
            raise unsupported("body.steps", f"{exc} ({served.entry.name})") from None
        seed = body.seed if body.seed is not None else random_seed()
        try:
            seeds = image_seeds(seed, body.n)
        except ValueError as exc:
            raise unsupported("body.seed", str(exc)) from None
        return seeds, steps, seed

    async def _generate(
        self,
        body: GenerateRequest,
        served: ModelHandle,
        media_type: str,
        request_id: str,
        client_gone: Callable[[], Awaitable[Any]],
        started: float,
    ) -> Rendered:
        info = served.info
        assert info is not None
        seeds, steps, seed = self._check(body, served, info)
        timeout_s = min(self.settings.request_timeout_s, body.timeout_s or math.inf)
        deadline = time.monotonic() + timeout_s
        try:
            generated = await served.generate(seeds, steps, deadline, client_gone)
        except QueueFullError as exc:
            raise APIError(
                503,
                "overloaded",
                f"{served.entry.name} has {exc.queued_units} images queued (limit {served.entry.max_queue_images}); "
                f"retry in {exc.retry_after_s} s",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except QueueClosedError:
            raise APIError(503, "shutting_down", "the server is shutting down") from None
        except DeadlineExceededError:
            raise APIError(504, "deadline_exceeded", f"no result within {timeout_s:.3g} s") from None
        except BatchFailedError as exc:
            # The exception text may name files or internals: it goes to the log, the client gets the request id.
            logger.error("request %s: the batch holding it failed: %s", request_id, exc)
            message = f"image generation failed; the server log has the details under request id {request_id}"
            raise APIError(500, "generation_failed", message) from None
        return await self.render(body, info, media_type, request_id, seeds, steps, seed, generated, started)

    async def render(
        self,
        body: GenerateRequest,
        info: SamplerInfo,
        media_type: str,
        request_id: str,
        seeds: list[int],
        steps: int,
        seed: int,
        result: Generated,
        started: float,
    ) -> Rendered:
        """Encode generated images as `media_type` (also an async job's result); `started` is perf_counter time."""
        images = result.images
        encode_started = time.perf_counter()
        pool, workers, level = self.png_pool, self.settings.png_workers, self.settings.png_compress_level
        grid = await encode_grid(images, pool, level) if media_type == PNG else None
        pngs = await encode_pngs(images, pool, workers, level) if grid is None else []
        png_s = time.perf_counter() - encode_started
        self.metrics.observe_png_encode(body.dataset, body.sampler, png_s)

        latency = LatencyMs(
            queue=round(result.queue_s * 1000, 3),
            inference=round(result.inference_s * 1000, 3),
            png_encode=round(png_s * 1000, 3),
            total=round((time.perf_counter() - started) * 1000, 3),
        )
        timing = [("queue", latency.queue), ("inference", latency.inference), ("png", latency.png_encode)]
        headers = {
            "X-Model": body.dataset,
            "X-Sampler": body.sampler,
            "X-Steps": str(steps),
            "X-Seed": str(seed),
            "X-Image-Count": str(len(seeds)),
            "X-Weights": "random" if info.random_weights else "real",
            "X-Dtype": info.dtype,
        }
        channels, height, width = images.shape[3], images.shape[1], images.shape[2]
        payload = GenerateResponse(
            request_id=request_id,
            model=body.dataset,
            sampler=body.sampler,
            steps=steps,
            seed=seed,
            seeds=seeds,
            width=width,
            height=height,
            channels=channels,
            backend=info.backend,
            device=info.device,
            dtype=info.dtype,
            random_weights=info.random_weights,
            images=[],
            latency_ms=latency,
        )
        if grid is not None:
            return Rendered(PNG, grid, headers, timing)
        if media_type == ZIP:
            names = [f"{body.dataset}-{body.sampler}-seed{s}.png" for s in seeds]
            metadata = payload.model_dump(exclude={"images"})
            loop = asyncio.get_running_loop()
            archive = await loop.run_in_executor(pool, build_zip, pngs, names, metadata)
            filename = f"{body.dataset}-{body.sampler}-seed{seed}.zip"
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
            return Rendered(ZIP, archive, headers, timing)
        assert media_type == JSON
        payload.images = [base64.b64encode(png).decode("ascii") for png in pngs]
        return Rendered(JSON, payload.model_dump(), headers, timing)
