"""Dynamic batching: one payload-agnostic queue and one worker thread per served model.

A request becomes a `Ticket`: `size` units (images) of opaque work. The worker coalesces queued units into a
batch of up to `max_batch_units`, waiting at most `max_wait_s` after the oldest ticket arrived; a ticket larger
than a batch spans several. The batch runs as `run_batch(slices) -> one result per slice` on the worker thread,
so the event loop never blocks and one model runs one batch at a time. A ticket's future resolves to its slice
results in unit order; a batch that raises fails only the tickets in it, and the worker carries on. The queue
never looks inside a payload: what a unit is and what a batch computes belong to the serving layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ddgan.model.sampling import SamplingStoppedError

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    def __init__(self, queued_units: int, retry_after_s: int) -> None:
        super().__init__(f"{queued_units} units already queued")
        self.queued_units = queued_units
        self.retry_after_s = retry_after_s


class QueueClosedError(Exception):
    """The server is shutting down and takes no new work."""


class DeadlineExceededError(Exception):
    """The ticket's deadline passed before its work was done."""


class BatchFailedError(Exception):
    """`run_batch` raised while running a batch that held this ticket's work."""


class BatchObserver(Protocol):
    def batch_done(self, units: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queued(self, units: int) -> None: ...


@dataclass(frozen=True)
class TicketResult:
    parts: list[Any]  # run_batch's results for this ticket's slices, in unit order
    queue_s: float  # enqueue -> first batch starts
    inference_s: float  # run_batch time of the batches holding this ticket's units
    batches: int


@dataclass(eq=False)
class Ticket:
    payload: Any
    size: int
    cost: float  # work per unit (e.g. denoising steps): the rate estimate and Retry-After count work
    deadline: float  # time.monotonic()
    future: asyncio.Future[TicketResult]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.monotonic)
    next_index: int = 0  # first unit not yet given to a batch
    done: int = 0
    parts: dict[int, Any] = field(default_factory=dict)  # slice start -> result
    started_at: float | None = None
    inference_s: float = 0.0
    batches: int = 0
    finished: bool = False

    @property
    def remaining(self) -> int:
        return self.size - self.next_index


@dataclass(frozen=True)
class Slice:
    """Units `start .. start + count - 1` of one ticket, inside one batch."""

    ticket: Ticket
    start: int
    count: int

    @property
    def payload(self) -> Any:
        return self.ticket.payload


RunBatch = Callable[[list[Slice]], list[Any]]


def _resolve(future: asyncio.Future[TicketResult], result: TicketResult | None, error: BaseException | None) -> None:
    if future.done():  # the handler gave up (deadline, disconnect)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class BatchQueue:
    """The queue and worker thread of one model."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_units: int,
        max_wait_s: float,
        max_queue_units: int,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.run_batch = run_batch
        self.max_batch_units = max_batch_units
        self.max_wait_s = max_wait_s
        self.max_queue_units = max_queue_units
        self.observer = observer
        self._pending: deque[Ticket] = deque()
        self._queued_units = 0
        self._running_work = 0.0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Work = units x cost; the rate is an exponential average over recent batches (warm-up seeds it).
        self._work_per_s: float | None = None

    # ----- event-loop side -----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name=f"batch-{self.name}", daemon=True)
        self._thread.start()

    @property
    def queued_units(self) -> int:
        return self._queued_units

    @property
    def alive(self) -> bool:
        """The worker thread runs (a health check: it only ends when the queue closes)."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, payload: Any, size: int, cost: float, deadline: float) -> Ticket:
        """Queue a ticket (call from the event loop); raises QueueFullError or QueueClosedError."""
        loop = asyncio.get_running_loop()
        ticket = Ticket(payload, size, cost, deadline, loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise QueueClosedError(f"{self.name} is shutting down")
            if self._queued_units + size > self.max_queue_units:
                raise QueueFullError(self._queued_units, self._retry_after_locked(size, cost))
            self._pending.append(ticket)
            self._set_queued(self._queued_units + size)
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop what is left of a ticket (client gone or handler timed out); a running batch still completes."""
        with self._cond:
            if ticket.finished:
                return
            ticket.finished = True
            self._remove_locked(ticket)

    def record_throughput(self, work: float, seconds: float) -> None:
        """Feed the rate estimate (units x cost per second) used for Retry-After."""
        if seconds <= 0:
            return
        rate = work / seconds
        with self._cond:
            self._work_per_s = rate if self._work_per_s is None else 0.7 * self._work_per_s + 0.3 * rate

    def close(self, timeout_s: float) -> None:
        """Stop taking tickets, finish the queued ones within `timeout_s`, then fail what is left."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            for ticket in list(self._pending):
                self._fail_locked(ticket, QueueClosedError("server shut down before this request ran"))

    # ----- worker side -----
    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[Slice] | None:
        with self._cond:
            while True:
                self._drop_expired_locked()
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._pending[0]
                available = sum(t.remaining for t in self._pending)
                wait_s = head.enqueued_at + self.max_wait_s - time.monotonic()
                if available >= self.max_batch_units or wait_s <= 0 or self._closing:
                    break
                self._cond.wait(min(wait_s, max(head.deadline - time.monotonic(), 0.0)))
            slices: list[Slice] = []
            room = self.max_batch_units
            for ticket in list(self._pending):
                if room == 0:
                    break
                count = min(room, ticket.remaining)
                slices.append(Slice(ticket, ticket.next_index, count))
                ticket.next_index += count
                room -= count
                if ticket.remaining == 0:
                    self._pending.remove(ticket)
            self._set_queued(self._queued_units - (self.max_batch_units - room))
            self._running_work = sum(s.count * s.ticket.cost for s in slices)
            return slices

    def _run(self, slices: list[Slice]) -> None:
        started = time.monotonic()
        for piece in slices:
            ticket = piece.ticket
            if ticket.started_at is None:
                ticket.started_at = started
                if self.observer:
                    self.observer.queue_wait(started - ticket.enqueued_at)
        units = sum(s.count for s in slices)
        try:
            results = self.run_batch(slices)
            if len(results) != len(slices):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(slices)} slices")
        except SamplingStoppedError:
            # Every ticket in the batch was given up while it ran: nothing to resolve, nothing measured.
            logger.info("%s: batch of %d units stopped early, every ticket in it was given up", self.name, units)
            with self._cond:
                self._running_work = 0.0
            return
        except Exception as exc:
            logger.exception("%s: batch of %d units failed", self.name, units)
            with self._cond:
                self._running_work = 0.0
                for piece in slices:
                    self._fail_locked(piece.ticket, BatchFailedError(f"{type(exc).__name__}: {exc}"))
            return
        seconds = time.monotonic() - started
        self.record_throughput(sum(s.count * s.ticket.cost for s in slices), seconds)
        if self.observer:
            self.observer.batch_done(units, seconds)
        with self._cond:
            self._running_work = 0.0
            for piece, result in zip(slices, results, strict=True):
                ticket = piece.ticket
                ticket.parts[piece.start] = result
                ticket.done += piece.count
                ticket.inference_s += seconds
                ticket.batches += 1
                if ticket.done == ticket.size and not ticket.finished:
                    ticket.finished = True
                    queue_s = (ticket.started_at or started) - ticket.enqueued_at
                    parts = [ticket.parts[start] for start in sorted(ticket.parts)]
                    self._notify(ticket, TicketResult(parts, queue_s, ticket.inference_s, ticket.batches), None)

    # ----- helpers (caller holds the lock) -----
    def _retry_after_locked(self, size: int, cost: float) -> int:
        if not self._work_per_s:
            return 1
        queued = sum(t.remaining * t.cost for t in self._pending)
        # Work that must drain before `size` more units fit under the bound, at the measured rate.
        backlog = queued + self._running_work - (self.max_queue_units - size) * cost
        return max(1, math.ceil(max(backlog, 0.0) / self._work_per_s))

    def _drop_expired_locked(self) -> None:
        now = time.monotonic()
        for ticket in [t for t in self._pending if t.deadline <= now]:
            self._fail_locked(ticket, DeadlineExceededError("deadline passed while queued"))

    def _fail_locked(self, ticket: Ticket, error: BaseException) -> None:
        if ticket.finished:
            return
        ticket.finished = True
        self._remove_locked(ticket)
        self._notify(ticket, None, error)

    def _remove_locked(self, ticket: Ticket) -> None:
        if ticket in self._pending:
            self._pending.remove(ticket)
            self._set_queued(self._queued_units - ticket.remaining)
            ticket.next_index = ticket.size

    def _set_queued(self, units: int) -> None:
        self._queued_units = units
        if self.observer:
            self.observer.queued(units)

    def _notify(self, ticket: Ticket, result: TicketResult | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
            ticket.loop.call_soon_threadsafe(_resolve, ticket.future, result, error)
