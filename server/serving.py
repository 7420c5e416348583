"""The serving layer: a validated /generate request in, encoded images plus timings out.

Routes validate the body and negotiate the media type; `GenerationService.generate` does the rest: finds the
model, checks the request against what its sampler runs (`SamplerInfo.check_steps`, the one place steps are
validated), queues the images on the model's batch queue, waits (deadline, client disconnect), encodes the
PNGs on the pool, and records the request in the metrics. It owns the one in-flight count, the PNG pool and
the PNG cache (server/png_cache.py): seeds already encoded are answered from it, only the others are queued.
`image` answers GET /v1/images (one content-addressed PNG, ETag, 304) through the same cache.
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
from ddgan.server.encoding import JSON, PNG, ZIP, build_zip, encode_grid
from ddgan.server.engine import ClientGoneError, Engine, Generated, ModelHandle, ModelState
from ddgan.server.errors import APIError
from ddgan.server.metrics import UNKNOWN, ServerMetrics
from ddgan.server.png_cache import IMMUTABLE, CacheUse, ImageAddress, PngCache, none_match
from ddgan.server.schemas import GenerateRequest, GenerateResponse, LatencyMs
from ddgan.server.seed_images import SeedImages, encoded_images, seed_images
from ddgan.server.settings import ServerSettings
from ddgan.server.tickets import Priority

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
class ImageAnswer:
    """GET /v1/images: 200 with the PNG, or 304 (png None); the ETag and caching headers either way."""

    status: int
    png: bytes | None
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


def request_priority(body: GenerateRequest, key_priority: Priority | None) -> Priority:
    """The body's priority (default interactive), never above the one its API key is mapped to."""
    asked = Priority(body.priority) if body.priority else Priority.INTERACTIVE
    return max(asked, key_priority or Priority.INTERACTIVE, key=lambda p: p.rank)


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
        self.in_flight = 0  # /generate and /v1/images requests past validation (event-loop side only)
        self.cache = PngCache(settings.png_cache_bytes, metrics)

    async def stop(self, timeout_s: float) -> None:
        """Requests whose images are done still encode them on the pool: let them finish first."""
        give_up = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        self.png_pool.shutdown(wait=True)

    async def generate(
        self,
        body: GenerateRequest,
        media_type: str,
        request_id: str,
        client_gone: Callable[[], Awaitable[Any]],
        cache_use: CacheUse = CacheUse(),
        key_priority: Priority | None = None,
    ) -> Rendered:
        """Generate and encode; raises APIError (answered in the error shape) or ClientGoneError.

        `key_priority`: the priority the caller's API key is mapped to (`DDGAN_KEY_PRIORITIES`), a ceiling.
        """
        started = time.perf_counter()
        labels = (UNKNOWN, UNKNOWN)
        status = 200
        try:
            served = self._served_model(body.dataset, body.sampler)
            labels = (body.dataset, body.sampler)
            self.in_flight += 1
            self.metrics.in_flight_changed(*labels, 1)
            try:
                priority = request_priority(body, key_priority)
                return await self._generate(
                    body, served, media_type, request_id, client_gone, cache_use, started, priority
                )
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
        served = self._served_model(body.dataset, body.sampler)
        info = served.info
        assert info is not None
        seeds, steps, seed = self._check(body, served, info)
        return Admitted(served, info, seeds, steps, seed)

    def _served_model(self, dataset: str, sampler: str) -> ModelHandle:
        engine = self.engine
        served = engine.lookup(dataset, sampler)
        if served is None:
            known = sorted({f"{m.entry.dataset}/{m.entry.sampler}" for m in engine.handles()})
            message = f"no model {dataset}/{sampler}; configured: {', '.join(known)}"
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
        """(seeds, steps, seed) of a request, or a 422 naming the field."""
        if body.n > self.settings.max_images_per_request:
            raise invalid("body.n", f"must be between 1 and {self.settings.max_images_per_request}")
        if body.n > served.entry.max_queue_images:
            raise unsupported("body.n", f"must be at most {served.entry.max_queue_images} for {served.entry.name}")
        try:
            steps = info.check_steps(body.steps)
        except StepsError as exc:
            raise unsupported("body.steps", f"{exc} ({served.entry.name})") from None
        bound = served.max_queue_work
        if bound is not None and body.n * steps > bound:
            message = f"n x steps = {body.n * steps} image-steps exceeds what {served.entry.name} queues ({bound})"
            raise unsupported("body.n", message)
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
        cache_use: CacheUse,
        started: float,
        priority: Priority,
    ) -> Rendered:
        info = served.info
        assert info is not None
        seeds, steps, seed = self._check(body, served, info)
        timeout_s = min(self.settings.request_timeout_s, body.timeout_s or math.inf)
        images = await self._seed_images(
            served, info, seeds, steps, timeout_s, client_gone, cache_use, priority, request_id
        )
        rendered = await self._render(body, info, media_type, request_id, seeds, steps, seed, images, started)
        rendered.headers["X-Priority"] = priority.value
        return rendered

    async def _seed_images(
        self,
        served: ModelHandle,
        info: SamplerInfo,
        seeds: list[int],
        steps: int,
        timeout_s: float,
        client_gone: Callable[[], Awaitable[Any]],
        cache_use: CacheUse,
        priority: Priority = Priority.INTERACTIVE,
        request_id: str | None = None,
    ) -> SeedImages:
        deadline = time.monotonic() + timeout_s

        async def generate(missing: list[int]) -> Generated:
            try:
                return await served.generate(missing, steps, deadline, client_gone, priority=priority)
            except QueueFullError as exc:
                raise APIError(
                    503,
                    "overloaded",
                    f"{served.entry.name} has {exc.queued_units} images queued "
                    f"(limit {served.entry.max_queue_images}), {exc.queued_work:g} image-steps "
                    f"(limit {served.max_queue_work}); retry in {exc.retry_after_s} s",
                    headers={"Retry-After": str(exc.retry_after_s)},
                ) from None
            except QueueClosedError:
                raise APIError(503, "shutting_down", "the server is shutting down") from None
            except DeadlineExceededError:
                raise APIError(504, "deadline_exceeded", f"no result within {timeout_s:.3g} s") from None
            except BatchFailedError as exc:
                # The exception text may name files or internals: it goes to the log, the client gets the id.
                logger.error("request %s: the batch holding it failed: %s", request_id or "?", exc)
                message = "image generation failed; the server log has the details under this request id"
                raise APIError(500, "generation_failed", message) from None

        settings = self.settings
        return await seed_images(
            served.entry.dataset, info, seeds, steps, generate, self.cache, self.png_pool,
            settings.png_workers, settings.png_compress_level, cache_use,
        )  # fmt: skip

    async def image(
        self,
        dataset: str,
        sampler: str,
        seed: int,
        steps: int | None,
        if_none_match: str | None,
        client_gone: Callable[[], Awaitable[Any]],
        cache_use: CacheUse = CacheUse(),
    ) -> ImageAnswer:
        """One content-addressed PNG (GET /v1/images/...), or a 304 when the client's ETag is current."""
        labels = (UNKNOWN, UNKNOWN)
        status = 200
        try:
            served = self._served_model(dataset, sampler)
            labels = (dataset, sampler)
            info = served.info
            assert info is not None
            try:
                checked_steps = info.check_steps(steps)
            except StepsError as exc:
                raise unsupported("query.steps", f"{exc} ({served.entry.name})") from None
            address = ImageAddress.of(dataset, info, seed, checked_steps, self.settings.png_compress_level)
            headers = {
                "ETag": address.etag,
                "Cache-Control": IMMUTABLE,
                "X-Model": dataset,
                "X-Sampler": sampler,
                "X-Steps": str(checked_steps),
                "X-Seed": str(seed),
                "X-Weights": "random" if info.random_weights else "real",
            }
            if none_match(if_none_match, address.etag):
                status = 304
                return ImageAnswer(304, None, headers, [])
            self.in_flight += 1
            try:
                timeout_s = self.settings.request_timeout_s
                images = await self._seed_images(served, info, [seed], checked_steps, timeout_s, client_gone, cache_use)
            finally:
                self.in_flight -= 1
            headers["X-Cache"] = "hit" if images.cached else "miss"
            timing = [("queue", images.queue_s * 1000), ("inference", images.inference_s * 1000),
                      ("png", images.png_s * 1000)]  # fmt: skip
            return ImageAnswer(200, images.pngs[0], headers, timing)
        except APIError as exc:
            status = exc.status
            raise
        except ClientGoneError:
            status = CLIENT_CLOSED
            raise
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.observe_image_request(*labels, status)

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
        """Encode generated images as `media_type` (an async job's result); `started` is perf_counter time.
        Their PNGs join the cache, so a job's seeds cost no sampler time in a later request either."""
        settings = self.settings
        images = await encoded_images(
            body.dataset, info, seeds, steps, result, self.cache, self.png_pool,
            settings.png_workers, settings.png_compress_level,
        )  # fmt: skip
        return await self._render(body, info, media_type, request_id, seeds, steps, seed, images, started)

    async def _render(
        self,
        body: GenerateRequest,
        info: SamplerInfo,
        media_type: str,
        request_id: str,
        seeds: list[int],
        steps: int,
        seed: int,
        result: SeedImages,
        started: float,
    ) -> Rendered:
        pool, level = self.png_pool, self.settings.png_compress_level
        encode_started = time.perf_counter()
        grid = await encode_grid(await result.pixels(pool), pool, level) if media_type == PNG else None
        png_s = result.png_s + time.perf_counter() - encode_started
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
            "X-Cached-Images": str(result.cached),
            "X-Weights": "random" if info.random_weights else "real",
            "X-Dtype": info.dtype,
        }
        if result.replica is not None:
            headers["X-Replica"] = result.replica
        channels, height, width = info.image_shape
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
            cached=result.cached,
            images=[],
            latency_ms=latency,
        )
        if grid is not None:
            return Rendered(PNG, grid, headers, timing)
        if media_type == ZIP:
            names = [f"{body.dataset}-{body.sampler}-seed{s}.png" for s in seeds]
            metadata = payload.model_dump(exclude={"images"})
            loop = asyncio.get_running_loop()
            archive = await loop.run_in_executor(pool, build_zip, result.pngs, names, metadata)
            filename = f"{body.dataset}-{body.sampler}-seed{seed}.zip"
            headers["Content-Disposition"] = f'attachment; filename="{filename}"'
            return Rendered(ZIP, archive, headers, timing)
        assert media_type == JSON
        payload.images = [base64.b64encode(png).decode("ascii") for png in result.pngs]
        return Rendered(JSON, payload.model_dump(), headers, timing)
