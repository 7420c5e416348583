"""How long until a full queue has room: measured throughput, the planned batches, and Retry-After.

Throughput is measured per worker in cost units (image-steps the sampler really computes, padding included)
per second: the work of its last `WINDOW` batches over their total time, so a long batch weighs as much as it
took. A warm-up measurement only seeds it until the first real batch.

A full queue gets room when the worker(s) take enough batches from it. With the queue cut into the batches it
will run (`tickets.plan_batches`, in service order) `B_1, B_2, ...` and a worker free in `r` seconds, batch
`B_j` is taken at `r + (c_1 + ... + c_{j-1}) / rate` (c: a batch's cost); the wait is that time for the first
`j` after which the new ticket's images and work fit under both bounds. Several workers: each batch goes to
the worker free first. Retry-After is that wait rounded up, plus jitter: uniform in [0, max(1 s, 20 %)], so
clients refused together do not all retry in the same second.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

WINDOW = 8  # batches per worker in the throughput estimate
JITTER_FRACTION = 0.2
MIN_JITTER_S = 1.0
UNMEASURED_RETRY_S = 1.0  # no batch timed yet (warm-up off): the smallest honest answer


class Throughput:
    """One worker's measured rate in cost units per second."""

    def __init__(self) -> None:
        self._batches: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._seed: tuple[float, float] | None = None

    def seed(self, cost: float, seconds: float) -> None:
        """A warm-up measurement: used only until the first real batch is recorded."""
        if cost > 0 and seconds > 0:
            self._seed = (cost, seconds)

    def record(self, cost: float, seconds: float) -> None:
        if cost > 0 and seconds > 0:
            self._batches.append((cost, seconds))

    @property
    def rate(self) -> float | None:
        samples = list(self._batches) or ([self._seed] if self._seed else [])
        if not samples:
            return None
        return sum(c for c, _ in samples) / sum(s for _, s in samples)


@dataclass(frozen=True)
class PlannedBatch:
    units: int  # images it takes from the queue
    work: float  # image-steps it takes from the queue (what the bound counts)
    cost: float  # image-steps it computes (padding included: what its time is proportional to)


@dataclass(frozen=True)
class Backlog:
    queued_units: int
    queued_work: float
    batches: Sequence[PlannedBatch]  # the queue's pending tickets as the batches they will run in
    running: Sequence[tuple[float, float] | None]  # per worker: (cost, seconds so far) of its batch; None: idle
    rates: Sequence[float | None]  # per worker: cost units per second (None: not measured)


def seconds_until_room(backlog: Backlog, units: int, work: float, max_units: int, max_work: float) -> float | None:
    """When a ticket of `units` images and `work` image-steps fits under both bounds (None: never measured)."""
    known = [r for r in backlog.rates if r]
    if not known:
        return None
    fallback = sum(known) / len(known)  # a worker not measured yet runs like the others
    rates = [r or fallback for r in backlog.rates]
    # A running batch ends after cost / rate seconds; one past its estimate ends any moment now.
    free = [max(run[0] / rate - run[1], 0.0) if run else 0.0 for run, rate in zip(backlog.running, rates, strict=True)]
    left_units, left_work = backlog.queued_units, backlog.queued_work

    def fits() -> bool:
        return left_units + units <= max_units and left_work + work <= max_work + 1e-9

    if fits():
        return 0.0
    for batch in backlog.batches:
        worker = min(range(len(free)), key=free.__getitem__)
        taken_at = free[worker]
        left_units -= batch.units
        left_work -= batch.work
        if fits():
            return taken_at
        free[worker] = taken_at + batch.cost / rates[worker]
    return max(free)  # the whole queue drained (a ticket larger than the bound is refused before this)


def retry_after_s(wait_s: float | None, rng: random.Random) -> int:
    """Whole seconds (at least 1) for the Retry-After header: the wait plus jitter."""
    if wait_s is None:
        wait_s = UNMEASURED_RETRY_S
    spread = max(MIN_JITTER_S, JITTER_FRACTION * wait_s)
    return max(1, math.ceil(wait_s + rng.uniform(0.0, spread)))
