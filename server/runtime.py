"""The serving runtime: every registry model's state, sampler and batch queue, the PNG pool, the lifecycle.

Models load and warm up on a background thread after startup, so `/healthz` answers at once and `/readyz`
turns ready when every installed model has run its batch sizes once. A model's state is one of
`loading`, `warming`, `ready`, `not_installed` (404 with the install command) or `failed` (503 with the reason).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ddgan.server.batching import BatchQueue
from ddgan.server.loader import (
    LoadedModel,
    ModelNotInstalledError,
    ModelUnavailableError,
    load_entry,
    not_installed_reason,
    weights_present,
)
from ddgan.server.metrics import ServerMetrics
from ddgan.server.registry import ModelEntry, Registry
from ddgan.server.settings import ServerSettings

logger = logging.getLogger(__name__)

LoadModel = Callable[..., LoadedModel]
WARMUP_DDPM_STEPS = 2  # enough to compile/allocate every kernel the 1000-step loop uses


class ModelState(enum.StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    NOT_INSTALLED = "not_installed"
    FAILED = "failed"


class _QueueMetrics:
    """Adapts one model's batch-queue events to its labelled Prometheus series."""

    def __init__(self, metrics: ServerMetrics, model: str, sampler: str) -> None:
        self._inference = metrics.batch_inference.labels(model, sampler)
        self._batch_size = metrics.batch_size.labels(model, sampler)
        self._images = metrics.images_generated.labels(model, sampler)
        self._queue_wait = metrics.queue_wait.labels(model, sampler)
        self._queued = metrics.queued_images.labels(model, sampler)

    def batch_done(self, images: int, seconds: float) -> None:
        self._inference.observe(seconds)
        self._batch_size.observe(images)
        self._images.inc(images)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def queued(self, images: int) -> None:
        self._queued.set(images)


@dataclass(eq=False)
class ServedModel:
    entry: ModelEntry
    state: ModelState = ModelState.LOADING
    reason: str | None = "waiting to load"
    loaded: LoadedModel | None = None
    queue: BatchQueue | None = None
    warmup: dict[int, float] = field(default_factory=dict)  # batch size -> seconds

    @property
    def default_steps(self) -> int | None:
        if self.loaded is None:
            return self.entry.default_steps
        return self.entry.default_steps or int(self.loaded.sampler.steps)

    @property
    def max_steps(self) -> int:
        """DDPM: the registry's bound, never beyond the schedule the UNet was trained with."""
        trained = getattr(self.loaded.sampler, "num_train_timesteps", None) if self.loaded else None
        return min(self.entry.max_steps, int(trained)) if trained else self.entry.max_steps

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        if self.loaded is None:
            return None
        channels, height, width = self.loaded.sampler.image_shape
        return (int(channels), int(height), int(width))

    def run_batch(self, seeds: list[int], steps: int | None) -> Any:
        assert self.loaded is not None
        if self.entry.sampler == "ddpm":
            return self.loaded.sampler.sample(seeds, steps=steps or self.default_steps)
        return self.loaded.sampler.sample(seeds)


class Runtime:
    def __init__(
        self,
        settings: ServerSettings,
        registry: Registry,
        metrics: ServerMetrics,
        load_model: LoadModel = load_entry,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.load_model = load_model
        self.models = {entry.key: ServedModel(entry) for entry in registry.models}
        self.png_pool = ThreadPoolExecutor(settings.png_workers, thread_name_prefix="png")
        self.accepting = False
        self.requests_in_flight = 0  # /generate requests past validation (event-loop side only)
        self.started_at = time.time()
        self._loader: asyncio.Task[None] | None = None
        self._stopping = False

    # ----- lifecycle -----
    async def start(self) -> None:
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.accepting = True
        # Missing weights are known at once (404 with the install command), not after the others have loaded.
        if not self.settings.random_weights:
            for served in self.models.values():
                if not weights_present(served.entry):
                    served.state, served.reason = ModelState.NOT_INSTALLED, not_installed_reason(served.entry)
        self._loader = asyncio.create_task(asyncio.to_thread(self._load_all), name="load-models")

    async def wait_loaded(self, timeout_s: float | None = None) -> None:
        """Until every model left the loading/warming states (tests, `ddgan bench serve --spawn`)."""
        if self._loader is not None:
            await asyncio.wait_for(asyncio.shield(self._loader), timeout_s)

    async def stop(self) -> None:
        """Stop taking requests, let the queues finish their work, release the threads."""
        self.accepting = False
        self._stopping = True
        if self._loader is not None:
            await asyncio.shield(self._loader)
        queues = [m.queue for m in self.models.values() if m.queue is not None]
        timeout = self.settings.shutdown_timeout_s
        await asyncio.gather(*(asyncio.to_thread(q.close, timeout) for q in queues))
        # Requests whose images are done still encode them on the pool: let them finish first.
        give_up = time.monotonic() + timeout
        while self.requests_in_flight and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        self.png_pool.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        """Every installed model is warmed up (models without weights are reported, not waited for)."""
        states = [m.state for m in self.models.values()]
        return (
            self.accepting
            and ModelState.READY in states
            and all(s in (ModelState.READY, ModelState.NOT_INSTALLED) for s in states)
        )

    def lookup(self, dataset: str, sampler: str) -> ServedModel | None:
        return self.models.get((dataset, sampler))

    # ----- loading (background thread) -----
    def _load_all(self) -> None:
        for served in self.models.values():
            if served.state is ModelState.NOT_INSTALLED:
                continue
            if self._stopping:
                served.state, served.reason = ModelState.FAILED, "server shut down before the model loaded"
                continue
            self._load_one(served)

    def _load_one(self, served: ServedModel) -> None:
        entry, settings = served.entry, self.settings
        try:
            served.loaded = self.load_model(
                entry,
                random_weights=settings.random_weights,
                device=settings.device,
                backend=settings.backend if entry.sampler == "ddgan" else None,
            )
        except ModelNotInstalledError as exc:
            served.state, served.reason = ModelState.NOT_INSTALLED, exc.reason
            logger.warning("%s: %s", entry.name, exc.reason)
            return
        except ModelUnavailableError as exc:
            served.state, served.reason = ModelState.FAILED, exc.reason
            logger.error("%s: %s", entry.name, exc.reason)
            return
        except Exception as exc:  # a bug or a corrupt file must not take the other models down
            served.state, served.reason = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
            logger.exception("%s: loading failed", entry.name)
            return
        loaded = served.loaded
        queue = BatchQueue(
            entry.name,
            served.run_batch,
            max_batch_images=entry.max_batch_images,
            max_wait_s=entry.max_wait_ms / 1000,
            max_queue_images=entry.max_queue_images,
            default_steps=served.default_steps or 1,
            observer=_QueueMetrics(self.metrics, entry.dataset, entry.sampler),
        )
        served.state, served.reason = ModelState.WARMING, "warming up"
        try:
            if settings.warmup:
                self._warm_up(served, queue)
        except Exception as exc:
            served.state, served.reason = ModelState.FAILED, f"warm-up failed: {type(exc).__name__}: {exc}"
            logger.exception("%s: warm-up failed", entry.name)
            return
        served.queue = queue
        queue.start()
        self.metrics.set_model_info(entry.dataset, entry.sampler, loaded.backend, loaded.device, loaded.random_weights)
        served.state, served.reason = ModelState.READY, None
        logger.info(
            "%s ready: backend=%s device=%s dtype=%s weights=%s warm-up %s",
            entry.name,
            loaded.backend,
            loaded.device,
            loaded.dtype,
            "random" if loaded.random_weights else "real",
            {size: f"{seconds * 1000:.0f} ms" for size, seconds in served.warmup.items()},
        )

    def _warm_up(self, served: ServedModel, queue: BatchQueue) -> None:
        """Run each batch size once (first-call allocation, autotuning) and seed the throughput estimate."""
        steps = min(WARMUP_DDPM_STEPS, served.default_steps or 1) if served.entry.sampler == "ddpm" else None
        sizes = served.entry.batch_sizes
        served.run_batch([0], steps)  # the cold call: lazy initialisation, allocator growth
        for size in sizes:
            started = time.monotonic()
            served.run_batch(list(range(size)), steps)
            served.warmup[size] = time.monotonic() - started
        queue.record_throughput(sizes[-1] * (steps or served.default_steps or 1), served.warmup[sizes[-1]])
