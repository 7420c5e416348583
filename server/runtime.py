"""The serving runtime: every registry model's state, sampler and batch queue, and their lifecycle.

Models load and warm up on a background thread after startup, so `/healthz` answers at once and `/readyz`
turns ready when every installed model has run its batch sizes once. A model's state is one of
`loading`, `warming`, `ready`, `not_installed` (404 with the install command) or `failed` (503 with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddgan.model.sampler import Sampler, SamplerInfo, SamplingStoppedError
from ddgan.model.threads import set_threads
from ddgan.server.batching import BatchQueue, DeadlineExceededError, QueueClosedError, Worker
from ddgan.server.engine import ClientGoneError, Generated, ModelHandle, ModelState
from ddgan.server.loader import (
    ModelNotInstalledError,
    ModelUnavailableError,
    load_entry,
    not_installed_reason,
    weights_present,
    without_paths,
)
from ddgan.server.metrics import ServerMetrics
from ddgan.server.registry import ModelEntry, Registry
from ddgan.server.settings import ServerSettings
from ddgan.server.tickets import Priority
from ddgan.server.warmup import WarmedUp, warm_up, without_warm_up
from ddgan.server.work import ImageWork, WorkProgress, image_batch_cost, run_image_batch

logger = logging.getLogger(__name__)

LoadModel = Callable[..., Sampler]
STOP_GRACE_S = 0.5  # past the shutdown deadline: how long a running batch gets to reach its next step


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
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)  # set at the shutdown deadline

    @property
    def info(self) -> SamplerInfo | None:
        return self.sampler.info if self.sampler else None

    @property
    def queued_units(self) -> int:
        return self.queue.queued_units if self.queue else 0

    @property
    def queued_work(self) -> float:
        return self.queue.queued_work if self.queue else 0.0

    @property
    def max_queue_work(self) -> int | None:
        """The queue's bound in image-steps (None until the sampler, hence its most steps, is known)."""
        return int(self.queue.max_queue_work) if self.queue else self.entry.max_queue_work

    @property
    def workers(self) -> list[str]:
        return self.queue.workers if self.queue else list(self.entry.worker_devices)

    async def generate(
        self,
        seeds: list[int],
        steps: int,
        deadline: float,
        client_gone: Callable[[], Awaitable[Any]],
        progress: WorkProgress | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> Generated:
        """Queue the images, wait for them (deadline, disconnect, shutdown), cancel what is left when giving up."""
        assert self.queue is not None
        ticket = self.queue.submit(ImageWork(seeds, steps, progress), len(seeds), steps, deadline, priority)
        watcher: asyncio.Future[Any] = asyncio.ensure_future(client_gone())
        aborted = asyncio.ensure_future(self.shutdown.wait())
        try:
            done, _ = await asyncio.wait(
                {ticket.future, watcher, aborted},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ticket.future.done():
                result = ticket.future.result()  # or the queue's error
                return Generated(np.concatenate(result.parts), result.queue_s, result.inference_s, result.batches)
        finally:
            reason = "disconnected" if watcher.done() else "shutdown" if aborted.done() else "deadline"
            watcher.cancel()
            aborted.cancel()
            if not ticket.future.done():
                # Giving up (also when uvicorn cancels this task): drop the images no batch has taken, stop a
                # batch nobody else waits for, and make any late result a no-op.
                self.queue.cancel(ticket, reason)
                ticket.future.cancel()
        if aborted in done:
            raise QueueClosedError("the server shut down before this request finished")
        if watcher in done:
            raise ClientGoneError
        raise DeadlineExceededError("no result before the deadline")


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
        self._shutdown = asyncio.Event()  # set at the shutdown deadline: every waiting request answers 503
        self.models = {entry.key: ServedModel(entry, shutdown=self._shutdown) for entry in registry.models}
        self._accepting = False
        self.started_at = time.time()
        self._loader: threading.Thread | None = None
        self._loaded: asyncio.Future[None] | None = None
        self._stopping = False  # read by the loader thread: no more loading, warm-up stops at its next step
        self._deadline: float | None = None

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
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        # A daemon thread, not asyncio.to_thread: the loop's executor is joined at exit, and shutdown must not
        # wait for a model that is still loading.
        self._loader = threading.Thread(target=self._load_all, args=(loop, self._loaded), name="load-models")
        self._loader.daemon = True
        self._loader.start()

    async def wait_loaded(self, timeout_s: float | None = None) -> None:
        """Until every model left the loading/warming states (tests, `ddgan bench serve --spawn`)."""
        if self._loaded is not None:
            await asyncio.wait_for(asyncio.shield(self._loaded), timeout_s)

    def begin_shutdown(self, deadline: float) -> float:
        """Refuse new requests now; at `deadline` (time.monotonic) every request still waiting answers 503 and
        its work is dropped. The first call fixes the deadline (SIGTERM); it is returned."""
        if self._deadline is None:
            self._accepting = False
            self._stopping = True
            self._deadline = deadline
            loop = asyncio.get_running_loop()
            # asyncio's clock is time.monotonic
            loop.call_at(loop.time() + (deadline - time.monotonic()), self._shutdown.set)
        return self._deadline

    async def stop(self) -> None:
        """Stop taking requests, let the queues finish their work until the shutdown deadline, then stop them."""
        deadline = self.begin_shutdown(time.monotonic() + self.settings.shutdown_timeout_s)
        if self._loaded is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loaded), max(0.0, deadline - time.monotonic()))
        queues = [m.queue for m in self.models.values() if m.queue is not None]
        # A batch checks between denoising steps whether anyone still waits: a short grace lets it notice.
        remaining = max(0.0, deadline - time.monotonic()) + STOP_GRACE_S
        await asyncio.gather(*(asyncio.to_thread(q.close, remaining) for q in queues))

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def ready(self) -> bool:
        """Accepting, and no model still loading or warming, at least one serving (`DDGAN_READINESS=available`);
        strict: also none failed. Models without weights are reported (404 with the install command), not waited
        for; a failed model is listed in /readyz and answers 503 itself, so it does not take the others down."""
        states = [m.state for m in self.models.values()]
        settled = not any(s in (ModelState.LOADING, ModelState.WARMING) for s in states)
        strict_ok = self.settings.readiness != "strict" or ModelState.FAILED not in states
        return self._accepting and settled and ModelState.READY in states and strict_ok

    def handles(self) -> list[ModelHandle]:
        return list(self.models.values())

    async def metrics_page(self) -> bytes:
        return self.metrics.render()

    def lookup(self, dataset: str, sampler: str) -> ModelHandle | None:
        return self.models.get((dataset, sampler))

    # ----- hot reload (server/reload.py decides what changes; these carry it out) -----
    def load_detached(self, entry: ModelEntry) -> ServedModel:
        """Load and warm a model without serving it yet (blocking: run it on a thread); its state says how it went."""
        served = ServedModel(entry, shutdown=self._shutdown)
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
    def _load_all(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[None]) -> None:
        try:
            for served in list(self.models.values()):  # a hot reload may change the map meanwhile
                if served.state is ModelState.NOT_INSTALLED:
                    continue
                if self._stopping:
                    served.state, served.reason = ModelState.FAILED, "server shut down before the model loaded"
                    continue
                self._load_one(served)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_set_done, loaded)

    def _load_one(self, served: ServedModel) -> None:
        entry, settings = served.entry, self.settings
        devices = [settings.device or device for device in entry.worker_devices]
        try:
            samplers = [
                self.load_model(entry, random_weights=settings.random_weights, device=device, backend=settings.backend)
                for device in devices
            ]
        except ModelNotInstalledError as exc:
            served.state, served.reason = ModelState.NOT_INSTALLED, exc.reason
            logger.warning("%s: %s", entry.name, exc.detail)
            return
        except ModelUnavailableError as exc:
            served.state, served.reason = ModelState.FAILED, exc.reason
            logger.error("%s: %s", entry.name, exc.detail)
            return
        except Exception as exc:  # a bug or a corrupt file must not take the other models down
            served.state, served.reason = ModelState.FAILED, without_paths(f"{type(exc).__name__}: {exc}")
            logger.exception("%s: loading failed", entry.name)
            return
        served.state, served.reason = ModelState.WARMING, "warming up"
        try:
            warmed = self._warm_up_all(entry, samplers)
        except SamplingStoppedError:
            served.state, served.reason = ModelState.FAILED, "server shut down during warm-up"
            logger.info("%s: warm-up stopped (shutting down)", entry.name)
            return
        except Exception as exc:
            reason = without_paths(f"warm-up failed: {type(exc).__name__}: {exc}")
            served.state, served.reason = ModelState.FAILED, reason
            logger.exception("%s: warm-up failed", entry.name)
            return
        sampler = warmed[0].sampler
        served.sampler, served.warmup, served.micro_batch_choice = (
            sampler,
            warmed[0].seconds,
            warmed[0].micro_batch_choice,
        )
        info = sampler.info
        labels = worker_labels([w.sampler.info.device for w in warmed])
        threads = self._threads_per_worker(entry, len(warmed))
        queue = BatchQueue(
            entry.name,
            [
                Worker(label, functools.partial(run_image_batch, w.sampler), preparer(entry.nice, threads, w))
                for label, w in zip(labels, warmed, strict=True)
            ],
            max_batch_units=entry.max_batch_images,
            max_wait_s=entry.max_wait_ms / 1000,
            max_queue_units=entry.max_queue_images,
            max_queue_work=entry.max_queue_work or entry.max_queue_images * info.max_steps,
            batch_cost=image_batch_cost(info.micro_batch, info.remainder_sizes),
            aging_s=entry.aging_ms / 1000,
            observer=self.metrics.queue_observer(entry.dataset, entry.sampler),
        )
        queue.start()
        served.queue = queue
        self.metrics.set_model_info(
            entry.dataset, entry.sampler, info.backend, info.device, info.dtype, info.random_weights
        )
        served.state, served.reason = ModelState.READY, None
        logger.info(
            "%s ready: backend=%s device=%s dtype=%s weights=%s micro_batch=%s remainder_sizes=%s (%s) workers=%s "
            "threads=%s nice=%d "
            "warm-up %s",
            entry.name,
            info.backend,
            info.device,
            info.dtype,
            "random" if info.random_weights else "real",
            info.micro_batch,
            list(info.remainder_sizes),
            served.micro_batch_choice or "batch_invariant = false",
            ",".join(labels),
            threads or "default",
            entry.nice,
            {size: f"{seconds * 1000 / size:.1f} ms/image" for size, seconds in served.warmup.items()},
        )

    def _stop_if_shutting_down(self, done: int, total: int) -> None:
        """Warm-up's progress hook: SIGTERM must not wait for a warm-up (minutes for large models on a CPU)."""
        if self._stopping:
            raise SamplingStoppedError("shutting down")

    def _warm_up_all(self, entry: ModelEntry, samplers: list[Sampler]) -> list[WarmedUp]:
        """Warm every worker's sampler; the first one's measured micro-batch is every worker's (same bytes)."""
        warm = (
            functools.partial(warm_up, progress=self._stop_if_shutting_down)
            if self.settings.warmup
            else without_warm_up
        )
        first = warm(entry, samplers[0])
        chosen, remainders = first.sampler.info.micro_batch, first.sampler.info.remainder_sizes
        others = [
            warm(entry, s.with_micro_batch(chosen, remainders) if chosen and s.info.micro_batch is None else s)
            for s in samplers[1:]
        ]
        return [first, *others]

    def _threads_per_worker(self, entry: ModelEntry, workers: int) -> int | None:
        """The model's threads split among its workers; None: one worker keeps the process's setting."""
        total = entry.threads or (self.settings.torch_threads if workers > 1 else None)
        if total is None and workers > 1:
            total = torch.get_num_threads()
        return max(1, total // workers) if total else None


def preparer(nice: int, threads: int | None, warmed: WarmedUp) -> Callable[[], tuple[float, float] | None]:
    """What a worker thread does before serving: its threads and OS priority; the warm-up seeds its throughput."""

    def prepare() -> tuple[float, float] | None:
        # Both are per thread: torch's intra-op thread count (OpenMP) and the Linux nice value, which the
        # OpenMP threads this thread starts inherit.
        if threads is not None:
            torch.get_num_threads()  # torch's lazy per-thread initialisation would overwrite what is set first
            torch.set_num_threads(threads)
        if nice:
            lower_thread_priority(nice)
        return warmed.throughput_sample  # the micro-batch's full passes: images x steps is what they compute

    return prepare


def worker_labels(devices: list[str]) -> list[str]:
    """The `device` metric label of each worker: its device, numbered where several share one."""
    return [
        f"{device}#{devices[:i].count(device)}" if devices.count(device) > 1 else device
        for i, device in enumerate(devices)
    ]


def lower_thread_priority(increment: int) -> None:
    """Raise this thread's nice value by `increment` (Linux: nice is per thread; elsewhere a warning)."""
    if not hasattr(os, "setpriority") or os.uname().sysname != "Linux":
        logger.warning("nice: per-thread priorities need Linux; running at normal priority")
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(19, current + increment))
