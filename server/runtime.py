"""The serving runtime: every registry model's state, sampler and batch queue, and their lifecycle.

Models load and warm up on a background thread after startup, so `/healthz` answers at once and `/readyz`
turns ready when every installed model has run its batch sizes once. A model's state is one of
`loading`, `warming`, `ready`, `not_installed` (404 with the install command) or `failed` (503 with the reason).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ddgan.model.sampler import Sampler, SamplerInfo
from ddgan.model.threads import set_threads
from ddgan.server.batching import BatchQueue, DeadlineExceededError
from ddgan.server.engine import ClientGoneError, Generated, ModelHandle, ModelState
from ddgan.server.loader import (
    ModelNotInstalledError,
    ModelUnavailableError,
    load_entry,
    not_installed_reason,
    weights_present,
)
from ddgan.server.metrics import ServerMetrics
from ddgan.server.registry import ModelEntry, Registry
from ddgan.server.settings import ServerSettings
from ddgan.server.warmup import warm_up, without_warm_up
from ddgan.server.work import ImageWork, WorkProgress, run_image_batch

logger = logging.getLogger(__name__)

LoadModel = Callable[..., Sampler]


@dataclass(eq=False)
class ServedModel:
    """One registry model in this process: its sampler and batch queue (a `ModelHandle`)."""

    entry: ModelEntry
    state: ModelState = ModelState.LOADING
    reason: str | None = "waiting to load"
    sampler: Sampler | None = None
    queue: BatchQueue | None = None
    warmup: dict[int, float] = field(default_factory=dict)  # batch size -> seconds
    micro_batch_choice: str | None = None  # how the fixed forward size was chosen (None: not batch-invariant)

    @property
    def info(self) -> SamplerInfo | None:
        return self.sampler.info if self.sampler else None

    @property
    def queued_units(self) -> int:
        return self.queue.queued_units if self.queue else 0

    async def generate(
        self,
        seeds: list[int],
        steps: int,
        deadline: float,
        client_gone: Callable[[], Awaitable[Any]],
        progress: WorkProgress | None = None,
    ) -> Generated:
        """Queue the images, wait for them (deadline, disconnect), cancel what is left when giving up."""
        assert self.queue is not None
        ticket = self.queue.submit(ImageWork(seeds, steps, progress), len(seeds), steps, deadline)
        watcher: asyncio.Future[Any] = asyncio.ensure_future(client_gone())
        try:
            done, _ = await asyncio.wait(
                {ticket.future, watcher},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watcher.cancel()
        if ticket.future.done():
            result = ticket.future.result()  # or the queue's error
            return Generated(np.concatenate(result.parts), result.queue_s, result.inference_s, result.batches)
        # Give up: drop the images no batch has taken yet, and make any late result a no-op.
        self.queue.cancel(ticket)
        ticket.future.cancel()
        if watcher in done:
            raise ClientGoneError
        raise DeadlineExceededError("no result before the deadline")


class Runtime:
    """The in-process engine (`server.engine.Engine`): every registry model's sampler and queue here."""

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
        self._accepting = False
        self.started_at = time.time()
        self._loader: asyncio.Task[None] | None = None
        self._stopping = False

    # ----- lifecycle -----
    async def start(self) -> None:
        threads = set_threads(self.settings.torch_threads)
        logger.info("torch intra-op threads: %d (%s)", threads, "setting" if self.settings.torch_threads else "default")
        self._accepting = True
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
        """Stop taking requests and let the queues finish their work within the shutdown timeout."""
        self._accepting = False
        self._stopping = True
        if self._loader is not None:
            await asyncio.shield(self._loader)
        queues = [m.queue for m in self.models.values() if m.queue is not None]
        timeout = self.settings.shutdown_timeout_s
        await asyncio.gather(*(asyncio.to_thread(q.close, timeout) for q in queues))

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def ready(self) -> bool:
        """Every installed model is warmed up (models without weights are reported, not waited for)."""
        states = [m.state for m in self.models.values()]
        return (
            self._accepting
            and ModelState.READY in states
            and all(s in (ModelState.READY, ModelState.NOT_INSTALLED) for s in states)
        )

    def handles(self) -> list[ModelHandle]:
        return list(self.models.values())

    async def metrics_page(self) -> bytes:
        return self.metrics.render()

    def lookup(self, dataset: str, sampler: str) -> ModelHandle | None:
        return self.models.get((dataset, sampler))

    # ----- hot reload (server/reload.py decides what changes; these carry it out) -----
    def load_detached(self, entry: ModelEntry) -> ServedModel:
        """Load and warm a model without serving it yet (blocking: run it on a thread); its state says how it went."""
        served = ServedModel(entry)
        if self._stopping:
            served.state, served.reason = ModelState.FAILED, "server shut down before the model loaded"
        elif not self.settings.random_weights and not weights_present(entry):
            served.state, served.reason = ModelState.NOT_INSTALLED, not_installed_reason(entry)
        else:
            self._load_one(served)
        return served

    def install(self, served: ServedModel) -> ServedModel | None:
        """Serve `served` from now on (event loop); returns the model it replaces, for `retire`."""
        previous = self.models.get(served.entry.key)
        self.models[served.entry.key] = served
        return previous

    def withdraw(self, key: tuple[str, str]) -> ServedModel | None:
        """Stop serving a model (event loop): new requests no longer find it; `retire` it next."""
        served = self.models.pop(key, None)
        if served is not None:
            self.metrics.forget_model_info(*key)
        return served

    def retire(self, served: ServedModel) -> None:
        """Blocking: let a model no longer served finish its queued work, then release it."""
        if served.queue is not None:
            # No ticket outlives its deadline: waiting that long lets every request in flight complete.
            served.queue.close(max(self.settings.request_timeout_s, self.settings.jobs_timeout_s))
        served.sampler = None  # the last reference: weights and device memory go with it

    # ----- loading (background thread) -----
    def _load_all(self) -> None:
        for served in list(self.models.values()):  # a hot reload may change the map meanwhile
            if served.state is ModelState.NOT_INSTALLED:
                continue
            if self._stopping:
                served.state, served.reason = ModelState.FAILED, "server shut down before the model loaded"
                continue
            self._load_one(served)

    def _load_one(self, served: ServedModel) -> None:
        entry, settings = served.entry, self.settings
        try:
            sampler = self.load_model(
                entry, random_weights=settings.random_weights, device=settings.device, backend=settings.backend
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
        served.state, served.reason = ModelState.WARMING, "warming up"
        try:
            warmed = warm_up(entry, sampler) if settings.warmup else without_warm_up(entry, sampler)
        except Exception as exc:
            served.state, served.reason = ModelState.FAILED, f"warm-up failed: {type(exc).__name__}: {exc}"
            logger.exception("%s: warm-up failed", entry.name)
            return
        sampler = warmed.sampler
        served.sampler, served.warmup, served.micro_batch_choice = sampler, warmed.seconds, warmed.micro_batch_choice
        queue = BatchQueue(
            entry.name,
            functools.partial(run_image_batch, sampler),
            max_batch_units=entry.max_batch_images,
            max_wait_s=entry.max_wait_ms / 1000,
            max_queue_units=entry.max_queue_images,
            observer=self.metrics.queue_observer(entry.dataset, entry.sampler),
        )
        if warmed.throughput_sample is not None:
            queue.record_throughput(*warmed.throughput_sample)
        served.queue = queue
        queue.start()
        info = sampler.info
        self.metrics.set_model_info(
            entry.dataset, entry.sampler, info.backend, info.device, info.dtype, info.random_weights
        )
        served.state, served.reason = ModelState.READY, None
        logger.info(
            "%s ready: backend=%s device=%s dtype=%s weights=%s micro_batch=%s (%s) warm-up %s",
            entry.name,
            info.backend,
            info.device,
            info.dtype,
            "random" if info.random_weights else "real",
            info.micro_batch,
            served.micro_batch_choice or "batch_invariant = false",
            {size: f"{seconds * 1000 / size:.1f} ms/image" for size, seconds in served.warmup.items()},
        )
