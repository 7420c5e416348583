"""A model replica on Ray Serve: one registry model served by our own `Runtime` inside a Serve replica.

Each replica owns its sampler, batch queue and worker thread exactly as the native server does (dynamic
batching, warm-up, `micro_batch` padding), so a seed gives the same bytes from any replica on the same device
type, backend and dtype. The ingress calls `generate` through a `DeploymentHandle`; outcomes the serving layer
answers with an HTTP error come back as data (`Outcome`), so no exception has to survive pickling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from ddgan.export.backends import register as register_backends
from ddgan.model.sampling import SamplerInfo
from ddgan.server.batching import BatchFailedError, DeadlineExceededError, QueueClosedError, QueueFullError
from ddgan.server.engine import ModelState
from ddgan.server.metrics import ServerMetrics
from ddgan.server.rayserve.metrics_hub import MetricsPusher
from ddgan.server.registry import ModelEntry, Registry
from ddgan.server.runtime import Runtime
from ddgan.server.settings import ServerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one `generate` call ended with: images, or the batch queue's error as its name and fields."""

    replica: str
    images: np.ndarray | None = None
    queue_s: float = 0.0
    inference_s: float = 0.0
    batches: int = 0
    error: str | None = None  # "queue_full" | "closed" | "deadline" | "batch_failed"
    message: str = ""
    queued_units: int = 0
    retry_after_s: int = 1


@dataclass(frozen=True)
class ReplicaStatus:
    replica: str
    node: str  # the Ray node it runs on
    pid: int  # its worker process
    state: ModelState
    reason: str | None
    info: SamplerInfo | None
    queued_units: int
    micro_batch_choice: str | None
    warmup: dict[int, float]


def replica_name(deployment: str) -> str:
    """`<deployment>#<replica id>`: the `X-Replica` header and the metrics' `replica` label."""
    try:
        context = serve.get_replica_context()
    except RayServeException:  # Serve's local testing mode runs deployments in the driver, outside replicas
        return f"{deployment}#local-{os.getpid()}"
    return f"{context.deployment}#{context.replica_id.unique_id}"


def node_id() -> str:
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


class ModelReplica:
    """The Serve deployment class of one model (`app.py` binds it once per registry entry)."""

    # Serve awaits an async constructor before it routes to the replica.
    async def __init__(self, entry: ModelEntry, settings: ServerSettings, hub: Any) -> None:  # type: ignore[misc]
        self.entry = entry
        self.settings = settings
        self.name = replica_name(self.entry.name.replace("/", "-"))
        self.node = node_id()
        register_backends()
        self.metrics = ServerMetrics()
        self.runtime = Runtime(self.settings, Registry(models=[self.entry]), self.metrics)
        await self.runtime.start()
        # Serve routes to a replica once its constructor returns: load and warm up first, fail if that fails
        # (Serve then retries the replica and reports the deployment unhealthy with this message).
        await self.runtime.wait_loaded()
        served = self.runtime.models[self.entry.key]
        if served.state is not ModelState.READY:
            raise RuntimeError(f"{self.entry.name}: {served.state.value}: {served.reason}")
        self.pusher = MetricsPusher(hub, self.name, self.metrics)
        self.pusher.start()
        logger.info("%s ready on node %s", self.name, self.node)

    async def generate(self, seeds: list[int], steps: int, timeout_s: float) -> Outcome:
        """Queue the images on this replica's batch queue; a cancelled call (client gone) drops what is left."""
        served = self.runtime.models[self.entry.key]
        deadline = time.monotonic() + timeout_s  # deadlines travel as durations: clocks differ across hosts
        gone = asyncio.Event()
        task = asyncio.ensure_future(served.generate(seeds, steps, deadline, gone.wait))
        try:
            generated = await asyncio.shield(task)
        except asyncio.CancelledError:
            gone.set()  # the ingress cancelled the call: the queue drops the images no batch has taken
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
            raise
        except QueueFullError as exc:
            return Outcome(
                self.name, error="queue_full", queued_units=exc.queued_units, retry_after_s=exc.retry_after_s
            )
        except QueueClosedError as exc:
            return Outcome(self.name, error="closed", message=str(exc))
        except DeadlineExceededError as exc:
            return Outcome(self.name, error="deadline", message=str(exc))
        except BatchFailedError as exc:
            return Outcome(self.name, error="batch_failed", message=str(exc))
        return Outcome(self.name, generated.images, generated.queue_s, generated.inference_s, generated.batches)

    def status(self) -> ReplicaStatus:
        served = self.runtime.models[self.entry.key]
        return ReplicaStatus(
            self.name,
            self.node,
            os.getpid(),
            served.state,
            served.reason,
            served.info,
            served.queued_units,
            served.micro_batch_choice,
            dict(served.warmup),
        )

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose batch worker died is replaced."""
        queue = self.runtime.models[self.entry.key].queue
        if queue is None or not queue.alive:
            raise RuntimeError(f"{self.name}: the batch worker is not running")

    async def __del__(self) -> None:
        # Serve's graceful shutdown: finish queued work (shutdown_timeout_s), then drop this replica's series.
        await self.pusher.stop()
        await self.runtime.stop()
