"""The engine boundary of the server: what the serving layer and the routes need of the models.

`Runtime` (server/runtime.py) is the in-process engine: samplers and batch queues in this process.
`RayEngine` (server/rayserve/engine.py) sends the same work to replicas on Ray Serve. Both implement the two
protocols below, so routes, validation, encoding, metrics
and the error shape are written once. `ModelHandle.generate` raises the batch queue's errors
(`QueueFullError`, `QueueClosedError`, `DeadlineExceededError`, `BatchFailedError`) or `ClientGoneError`;
the serving layer turns them into HTTP answers. `progress` (an async job's) hears how its images advance.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ddgan.model.sampling import SamplerInfo
from ddgan.server.registry import ModelEntry
from ddgan.server.work import WorkProgress


class ModelState(enum.StrEnum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    NOT_INSTALLED = "not_installed"
    FAILED = "failed"


class ClientGoneError(Exception):
    """The client disconnected before its images were done; what no batch had taken was dropped."""


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # (n, H, W, C) uint8, in seed order
    queue_s: float  # enqueue -> first batch starts
    inference_s: float  # sampler time of the batches holding these images
    batches: int
    replica: str | None = None  # the replica that ran them (`X-Replica`), where an engine has several


class ModelHandle(Protocol):
    entry: ModelEntry
    state: ModelState
    reason: str | None
    micro_batch_choice: str | None  # how a batch-invariant model's forward size was chosen
    warmup: dict[int, float]  # batch size -> seconds of one warm-up call

    @property
    def info(self) -> SamplerInfo | None: ...

    @property
    def queued_units(self) -> int: ...

    async def generate(
        self,
        seeds: list[int],
        steps: int,
        deadline: float,
        client_gone: Callable[[], Awaitable[Any]],
        progress: WorkProgress | None = None,
    ) -> Generated: ...


class Engine(Protocol):
    started_at: float

    @property
    def accepting(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    def handles(self) -> list[ModelHandle]: ...

    def lookup(self, dataset: str, sampler: str) -> ModelHandle | None: ...

    async def metrics_page(self) -> bytes:
        """The Prometheus text of every process serving requests (the in-process engine: this one)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
