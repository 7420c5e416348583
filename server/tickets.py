"""Tickets, slices and the order in which a batch queue serves them (pure: no threads, no clock of its own).

A ticket is `size` units (images) of opaque work, each unit costing `cost` work (its denoising steps), so a
ticket's work is `size x cost` image-steps. Order: interactive tickets first, then batch tickets, each class
first come first served; a batch ticket that has waited `aging_s` is promoted and ranks with the interactive
ones by its arrival time, so it is served before every interactive ticket that arrived after it. That bounds
its wait: `aging_s`, plus the work queued before it arrived, plus the batch running at that moment.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ddgan.model.sampler import Progress


class Priority(enum.StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """0 is served first."""
        return 0 if self is Priority.INTERACTIVE else 1


@dataclass(frozen=True)
class TicketResult:
    parts: list[Any]  # run_batch's results for this ticket's slices, in unit order
    queue_s: float  # enqueue -> first batch starts
    inference_s: float  # run_batch time of the batches holding this ticket's units
    batches: int


_sequence = itertools.count()


@dataclass(eq=False)
class Ticket:
    payload: Any
    size: int
    cost: float  # work per unit (denoising steps): the queue bound and Retry-After count size x cost
    deadline: float  # on the queue's clock
    future: asyncio.Future[TicketResult]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.monotonic)  # on the queue's clock (it passes its own)
    priority: Priority = Priority.INTERACTIVE
    next_index: int = 0  # first unit not yet given to a batch
    done: int = 0
    parts: dict[int, Any] = field(default_factory=dict)  # slice start -> result
    started_at: float | None = None
    inference_s: float = 0.0
    batches: int = 0
    finished: bool = False
    drop_reason: str | None = None  # why its work was dropped: cancelled, disconnected, deadline, shutdown
    step_progress: tuple[int, int] | None = None  # (done, total) denoising iterations of its running batch
    sequence: int = field(default_factory=lambda: next(_sequence))  # ties of equal arrival times

    @property
    def remaining(self) -> int:
        return self.size - self.next_index

    @property
    def work(self) -> float:
        return self.size * self.cost

    def rank(self, now: float, aging_s: float) -> int:
        promoted = now - self.enqueued_at >= aging_s
        return 0 if promoted else self.priority.rank


@dataclass(frozen=True)
class Slice:
    """Units `start .. start + count - 1` of one ticket, inside one batch."""

    ticket: Ticket
    start: int
    count: int

    @property
    def payload(self) -> Any:
        return self.ticket.payload

    @property
    def work(self) -> float:
        return self.count * self.ticket.cost


# run_batch(slices, progress) -> one result per slice; progress(done, total) after every denoising iteration
# may raise SamplingStoppedError (nobody waits for the batch any more).
RunBatch = Callable[[list[Slice], Progress], list[Any]]
# The work a batch really computes (padding included), in the units of the tickets' work.
BatchCost = Callable[[Sequence[Slice]], float]


def requested_work(slices: Iterable[Slice]) -> float:
    """The default `BatchCost`: exactly the work the slices ask for (no padding)."""
    return sum(piece.work for piece in slices)


def service_order(pending: Iterable[Ticket], now: float, aging_s: float) -> list[Ticket]:
    return sorted(pending, key=lambda t: (t.rank(now, aging_s), t.enqueued_at, t.sequence))


def plan_batches(ordered: Sequence[Ticket], max_units: int, limit: int | None = None) -> list[list[Slice]]:
    """How the queue cuts `ordered` into batches of at most `max_units` units (a ticket may span several); the
    first `limit` batches only, when given."""
    batches: list[list[Slice]] = []
    current: list[Slice] = []
    room = max_units
    for ticket in ordered:
        start, left = ticket.next_index, ticket.remaining
        while left > 0:
            count = min(room, left)
            current.append(Slice(ticket, start, count))
            start, left, room = start + count, left - count, room - count
            if room == 0:
                batches.append(current)
                if limit is not None and len(batches) == limit:
                    return batches
                current, room = [], max_units
    if current:
        batches.append(current)
    return batches
