"""`RayEngine`: the `Engine` behind the ingress's routes, sending each model's work to its Serve deployment.

The ingress runs the same FastAPI app as `ddgan serve` (`create_app` with this engine), so routes, validation,
encoding, headers, the error shape and the request metrics are the native server's. A model handle keeps the
state of its deployment from a status call every `STATUS_INTERVAL_S` (`loading` until a replica answers), sends
`generate` to whichever replica Serve's router picks, and maps what comes back onto the batch queue's errors:
a replica's full queue and Serve's `max_queued_requests` both become 503 + Retry-After, a replica that died
under the request is retried on another one (a seed gives the same bytes anywhere) until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray import exceptions as ray_exceptions
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from ddgan.model.sampling import SamplerInfo
from ddgan.server.batching import BatchFailedError, DeadlineExceededError, QueueClosedError, QueueFullError
from ddgan.server.engine import ClientGoneError, Generated, ModelHandle, ModelState
from ddgan.server.loader import not_installed_reason, weights_present
from ddgan.server.metrics import ServerMetrics, render_replicas, snapshot
from ddgan.server.rayserve.metrics_hub import MetricsPusher
from ddgan.server.rayserve.replica import Outcome, ReplicaStatus
from ddgan.server.registry import ModelEntry, Registry
from ddgan.server.settings import ServerSettings
from ddgan.server.work import WorkProgress

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0
STATUS_TIMEOUT_S = 5.0
# A model is reported not running only when no replica has answered a status call for this long: one slow
# answer on a loaded host must not turn a serving model away.
UNSEEN_AFTER_S = 15.0
# A replica lost under a request (process killed, node gone): the request runs again elsewhere, this often.
RETRIES_ON_REPLICA_LOSS = 2
REPLICA_LOST = (ray_exceptions.RayActorError,)  # ActorDiedError, ActorUnavailableError


def model_installed_here(entry: ModelEntry, random_weights: bool) -> bool:
    return random_weights or weights_present(entry)


class RayModelHandle:
    """One registry model behind its Serve deployment (a `ModelHandle`)."""

    def __init__(self, entry: ModelEntry, deployment: Any | None, reason: str | None) -> None:
        self.entry = entry
        self.deployment = deployment  # a DeploymentHandle; None when the weights are not installed
        self.state = ModelState.LOADING if deployment is not None else ModelState.NOT_INSTALLED
        self.reason: str | None = reason or ("no replica has started yet" if deployment is not None else None)
        self._info: SamplerInfo | None = None
        self._queued_units = 0
        self._request_s: float | None = None  # recent seconds per request: the Retry-After of Serve's backpressure
        self._seen_at: float | None = None  # time.monotonic() of the last status answer
        self.micro_batch_choice: str | None = None
        self.warmup: dict[int, float] = {}

    @property
    def info(self) -> SamplerInfo | None:
        return self._info

    @property
    def queued_units(self) -> int:
        return self._queued_units

    async def refresh(self, timeout_s: float) -> None:
        """Ask one replica how it is; no answer in time means no replica is running (yet, or any more)."""
        assert self.deployment is not None
        response = self.deployment.status.remote()
        try:
            status: ReplicaStatus = await asyncio.wait_for(_result(response), timeout_s)
        except (TimeoutError, *REPLICA_LOST, DeploymentUnavailableError) as exc:
            response.cancel()
            if self._seen_at is None or time.monotonic() - self._seen_at > UNSEEN_AFTER_S:
                self.state, self.reason = ModelState.LOADING, f"no replica is running: {type(exc).__name__}"
            return
        self._seen_at = time.monotonic()
        self._info, self._queued_units = status.info, status.queued_units
        self.micro_batch_choice, self.warmup = status.micro_batch_choice, status.warmup
        self.state, self.reason = status.state, status.reason

    async def generate(
        self,
        seeds: list[int],
        steps: int,
        deadline: float,
        client_gone: Callable[[], Awaitable[Any]],
        progress: WorkProgress | None = None,
    ) -> Generated:
        """`progress` (async jobs) hears of the images when the replica's answer arrives, not step by step."""
        assert self.deployment is not None
        started = time.monotonic()
        for attempt in range(RETRIES_ON_REPLICA_LOSS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("no result before the deadline")
            try:
                outcome = await self._call(seeds, steps, remaining, client_gone)
            except REPLICA_LOST as exc:
                logger.warning("%s: replica lost under a request (attempt %d): %s", self.entry.name, attempt + 1, exc)
                lost = exc
                continue
            except BackPressureError:
                raise QueueFullError(self._queued_units, self._retry_after_s()) from None
            self._request_s = time.monotonic() - started
            generated = _generated(outcome)
            if progress is not None:
                progress.batch_started(len(seeds))
                progress.images_done(len(seeds))
            return generated
        raise BatchFailedError(f"the replicas serving this request were lost: {type(lost).__name__}")

    async def _call(
        self, seeds: list[int], steps: int, timeout_s: float, client_gone: Callable[[], Awaitable[Any]]
    ) -> Outcome:
        assert self.deployment is not None
        response = self.deployment.generate.remote(seeds, steps, timeout_s)
        result = asyncio.ensure_future(_result(response))
        watcher: asyncio.Future[Any] = asyncio.ensure_future(client_gone())
        try:
            done, _ = await asyncio.wait({result, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if result in done:
            return result.result()
        response.cancel()  # the replica drops the images no batch has taken
        result.cancel()
        with contextlib.suppress(BaseException):
            await result
        if watcher in done:
            raise ClientGoneError
        raise DeadlineExceededError("no result before the deadline")

    def _retry_after_s(self) -> int:
        return max(1, math.ceil(self._request_s or 1.0))


async def _result(response: Any) -> Any:
    return await response


def _generated(outcome: Outcome) -> Generated:
    if outcome.error == "queue_full":
        raise QueueFullError(outcome.queued_units, outcome.retry_after_s)
    if outcome.error == "closed":
        raise QueueClosedError(outcome.message)
    if outcome.error == "deadline":
        raise DeadlineExceededError(outcome.message)
    if outcome.error == "batch_failed":
        raise BatchFailedError(outcome.message)
    assert outcome.images is not None
    return Generated(outcome.images, outcome.queue_s, outcome.inference_s, outcome.batches, outcome.replica)


class RayEngine:
    """The ingress's engine (`server.engine.Engine`): every registry model as a Serve deployment handle."""

    def __init__(
        self,
        settings: ServerSettings,
        registry: Registry,
        metrics: ServerMetrics,
        *,
        deployments: dict[str, Any],
        hub: Any,
        replica: str,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.replica = replica
        self.models: dict[tuple[str, str], RayModelHandle] = {}
        for entry in registry.models:
            deployment = deployments.get(entry.name)
            reason = None if deployment is not None else not_installed_reason(entry)
            self.models[entry.key] = RayModelHandle(entry, deployment, reason)
        self.started_at = time.time()
        self._accepting = False
        self._poller: asyncio.Task[None] | None = None
        self._pusher = MetricsPusher(hub, replica, metrics)

    async def start(self) -> None:
        self._accepting = True
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="replica-status")
        self._pusher.start()

    async def _poll(self) -> None:
        while True:
            served = [m for m in self.models.values() if m.deployment is not None]
            await asyncio.gather(*(m.refresh(timeout_s=STATUS_TIMEOUT_S) for m in served))
            for model in served:
                if model.state is ModelState.READY and model.info is not None:
                    info = model.info
                    self.metrics.set_model_info(
                        model.entry.dataset,
                        model.entry.sampler,
                        info.backend,
                        info.device,
                        info.dtype,
                        info.random_weights,
                    )
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def stop(self) -> None:
        self._accepting = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._pusher.stop()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def ready(self) -> bool:
        states = [m.state for m in self.models.values()]
        return (
            self._accepting
            and ModelState.READY in states
            and all(s in (ModelState.READY, ModelState.NOT_INSTALLED) for s in states)
        )

    def handles(self) -> list[ModelHandle]:
        return list(self.models.values())

    def lookup(self, dataset: str, sampler: str) -> ModelHandle | None:
        return self.models.get((dataset, sampler))

    async def metrics_page(self) -> bytes:
        """Every replica's series (from the hub) and this ingress's own, each labelled with its replica."""
        try:
            snapshots = await asyncio.wait_for(_result(self.hub.collect.remote()), 5)
        except Exception as exc:  # the page still shows the ingress's series when the hub is restarting
            logger.warning("metrics hub unavailable: %s", exc)
            snapshots = {}
        snapshots[self.replica] = snapshot(self.metrics)
        return render_replicas(snapshots)
