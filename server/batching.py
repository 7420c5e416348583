"""Dynamic batching: one payload-agnostic queue per served model, one or more worker threads pulling from it.

A request becomes a `Ticket` (server/tickets.py): `size` units (images) of `cost` work each (denoising steps).
A free worker takes up to `max_batch_units` units in service order (interactive first, batch tickets promoted
after `aging_s`), waiting at most `max_wait_s` after the oldest ticket arrived for a batch to fill; a ticket
larger than a batch spans several. The batch runs as `run_batch(slices, progress)` on the worker's thread, so
the event loop never blocks and a worker runs one batch at a time. A ticket's future resolves to its slice
results in unit order; a batch that raises fails only the tickets in it, and the worker carries on.

The queue is bounded in units (memory) and in work (units x cost: time), and a refusal says when to retry
(server/backlog.py). `progress` is called between denoising iterations: once every ticket of the batch is
finished (cancelled, disconnected, past its deadline) it raises `SamplingStoppedError` and the batch stops
there; the work nobody got is reported to the observer as dropped, by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ddgan.model.sampler import SamplingStoppedError
from ddgan.server.backlog import Backlog, PlannedBatch, Throughput, retry_after_s, seconds_until_room
from ddgan.server.tickets import (
    BatchCost,
    Priority,
    RunBatch,
    Slice,
    Ticket,
    TicketResult,
    plan_batches,
    requested_work,
    service_order,
)

__all__ = [
    "BatchFailedError",
    "BatchObserver",
    "BatchQueue",
    "DeadlineExceededError",
    "QueueClosedError",
    "QueueFullError",
    "Worker",
]

logger = logging.getLogger(__name__)
Clock = Callable[[], float]


class QueueFullError(Exception):
    def __init__(self, queued_units: int, retry_after_s: int, queued_work: float = 0.0) -> None:
        super().__init__(f"{queued_units} units ({queued_work:g} work) already queued")
        self.queued_units = queued_units
        self.queued_work = queued_work
        self.retry_after_s = retry_after_s


class QueueClosedError(Exception):
    """The server is shutting down and takes no new work."""


class DeadlineExceededError(Exception):
    """The ticket's deadline passed before its work was done."""


class BatchFailedError(Exception):
    """`run_batch` raised while running a batch that held this ticket's work."""


class BatchObserver(Protocol):
    def batch_done(self, device: str, units: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queued(self, units: int, work: float) -> None: ...

    def dropped(self, work: float, reason: str) -> None: ...


@dataclass(frozen=True)
class Worker:
    """One worker thread: `label` (its metrics `device`), its `run_batch`, and `prepare`, run on the thread
    before it serves (threads, OS priority, warm-up), which may return a warm-up (cost, seconds) measurement."""

    label: str
    run_batch: RunBatch
    prepare: Callable[[], tuple[float, float] | None] | None = None


@dataclass(eq=False)
class _WorkerState:
    worker: Worker
    throughput: Throughput = field(default_factory=Throughput)
    batch: list[Slice] | None = None
    batch_cost: float = 0.0
    started_at: float = 0.0
    fraction_done: float = 0.0  # of its running batch's denoising iterations


def _resolve(future: asyncio.Future[TicketResult], result: TicketResult | None, error: BaseException | None) -> None:
    if future.done():  # the handler gave up (deadline, disconnect)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class BatchQueue:
    """The queue and worker threads of one model."""

    def __init__(
        self,
        name: str,
        workers: Sequence[Worker],
        *,
        max_batch_units: int,
        max_wait_s: float,
        max_queue_units: int,
        max_queue_work: float = math.inf,
        batch_cost: BatchCost = requested_work,
        aging_s: float = 2.0,
        observer: BatchObserver | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not workers:
            raise ValueError("a queue needs at least one worker")
        self.name = name
        self.max_batch_units = max_batch_units
        self.max_wait_s = max_wait_s
        self.max_queue_units = max_queue_units
        self.max_queue_work = max_queue_work
        self.batch_cost = batch_cost
        self.aging_s = aging_s
        self.observer = observer
        self.clock = clock
        self._rng = rng or random.Random()
        self._workers = [_WorkerState(w) for w in workers]
        self._pending: list[Ticket] = []
        self._queued_units = 0
        self._queued_work = 0.0
        self._cond = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._go = threading.Event()

    # ----- event-loop side -----
    def start(self) -> None:
        """Start the workers: each runs its `prepare` on its own thread; raises the first that failed."""
        prepared: list[threading.Event] = []
        errors: list[BaseException] = []
        for number, state in enumerate(self._workers):
            ready = threading.Event()
            thread = threading.Thread(
                target=self._worker, args=(state, ready, errors), name=f"batch-{self.name}-{number}", daemon=True
            )
            prepared.append(ready)
            self._threads.append(thread)
            thread.start()
        for ready in prepared:
            ready.wait()
        if errors:
            with self._cond:
                self._closing = True
            self._go.set()
            raise errors[0]
        self._go.set()

    @property
    def queued_units(self) -> int:
        return self._queued_units

    @property
    def queued_work(self) -> float:
        return self._queued_work

    @property
    def workers(self) -> list[str]:
        return [state.worker.label for state in self._workers]

    @property
    def alive(self) -> bool:
        """Every worker thread runs (a health check: they only end when the queue closes)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def submit(
        self, payload: Any, size: int, cost: float, deadline: float, priority: Priority = Priority.INTERACTIVE
    ) -> Ticket:
        """Queue a ticket (call from the event loop); raises QueueFullError or QueueClosedError."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closing:
                raise QueueClosedError(f"{self.name} is shutting down")
            ticket = Ticket(payload, size, cost, deadline, loop.create_future(), loop, self.clock(), priority)
            if not self._fits_locked(size, ticket.work):
                wait_s = seconds_until_room(
                    self._backlog_locked(), size, ticket.work, self.max_queue_units, self.max_queue_work
                )
                raise QueueFullError(self._queued_units, retry_after_s(wait_s, self._rng), self._queued_work)
            self._pending.append(ticket)
            self._set_queued(self._queued_units + size, self._queued_work + ticket.work)
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket, reason: str = "cancelled") -> None:
        """Drop what is left of a ticket; a running batch holding only finished tickets stops at its next step."""
        with self._cond:
            if ticket.finished:
                return
            ticket.finished = True
            ticket.drop_reason = reason
            self._remove_locked(ticket)

    def seconds_until_room(self, size: int, cost: float) -> float | None:
        """The estimated wait until a ticket of `size` units of `cost` fits (None: no batch timed yet)."""
        with self._cond:
            return seconds_until_room(
                self._backlog_locked(), size, size * cost, self.max_queue_units, self.max_queue_work
            )

    def close(self, timeout_s: float) -> None:
        """Stop taking tickets, finish the queued ones within `timeout_s`, then fail what is left (running
        batches stop at their next denoising step)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._go.set()
        give_up = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        with self._cond:
            left = list(self._pending) + [s.ticket for w in self._workers for s in (w.batch or [])]
            for ticket in left:
                self._fail_locked(ticket, QueueClosedError("server shut down before this request ran"), "shutdown")

    # ----- worker side -----
    def _worker(self, state: _WorkerState, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            if state.worker.prepare is not None:
                measured = state.worker.prepare()
                if measured is not None:
                    state.throughput.seed(*measured)
        except Exception as exc:  # reported by start(); the other workers exit
            errors.append(exc)
        finally:
            ready.set()
        self._go.wait()
        while True:
            batch = self._next_batch(state)
            if batch is None:
                return
            self._run(state, batch)

    def _next_batch(self, state: _WorkerState) -> list[Slice] | None:
        with self._cond:
            while True:
                self._drop_expired_locked()
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                now = self.clock()
                oldest = min(self._pending, key=lambda t: t.enqueued_at)
                available = sum(t.remaining for t in self._pending)
                wait_s = oldest.enqueued_at + self.max_wait_s - now
                if available >= self.max_batch_units or wait_s <= 0 or self._closing:
                    break
                soonest_deadline = min(t.deadline for t in self._pending)
                self._cond.wait(min(wait_s, max(soonest_deadline - now, 0.0)))
            ordered = service_order(self._pending, now, self.aging_s)
            batch = plan_batches(ordered, self.max_batch_units, limit=1)[0]
            for piece in batch:
                ticket = piece.ticket
                ticket.next_index = piece.start + piece.count
                if ticket.remaining == 0:
                    self._pending.remove(ticket)
            taken = sum(piece.count for piece in batch)
            self._set_queued(self._queued_units - taken, self._queued_work - sum(p.work for p in batch))
            state.batch, state.batch_cost = batch, self.batch_cost(batch)
            state.started_at, state.fraction_done = now, 0.0
            return batch

    def _run(self, state: _WorkerState, batch: list[Slice]) -> None:
        started = state.started_at
        tickets = list(dict.fromkeys(piece.ticket for piece in batch))
        for ticket in tickets:
            if ticket.started_at is None:
                ticket.started_at = started
                if self.observer:
                    self.observer.queue_wait(started - ticket.enqueued_at)

        def progress(done: int, total: int) -> None:
            for ticket in tickets:
                ticket.step_progress = (done, total)
            state.fraction_done = done / total if total else 1.0
            abandoned()

        def abandoned() -> None:
            now = self.clock()
            if all(t.finished or t.deadline <= now for t in tickets):
                raise SamplingStoppedError(f"{self.name}: nobody waits for this batch")

        units = sum(piece.count for piece in batch)
        try:
            abandoned()  # everything may have gone between taking the batch and running it
            results = state.worker.run_batch(batch, progress)
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} slices")
        except SamplingStoppedError:
            self._stopped(state, batch)
            return
        except Exception as exc:
            logger.exception("%s: batch of %d units failed", self.name, units)
            with self._cond:
                state.batch = None
                for piece in batch:
                    self._fail_locked(piece.ticket, BatchFailedError(f"{type(exc).__name__}: {exc}"), "failed")
            return
        seconds = self.clock() - started
        state.throughput.record(state.batch_cost, seconds)
        if self.observer:
            self.observer.batch_done(state.worker.label, units, seconds)
        with self._cond:
            state.batch = None
            for piece, result in zip(batch, results, strict=True):
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

    def _stopped(self, state: _WorkerState, batch: list[Slice]) -> None:
        """The batch stopped early: its tickets are all gone; count the work it did not do."""
        seconds = self.clock() - state.started_at
        undone = 1.0 - state.fraction_done
        state.throughput.record(state.batch_cost * state.fraction_done, seconds)
        logger.info(
            "%s: stopped a batch at %.1f %% of its steps: nobody waits for it", self.name, 100 * state.fraction_done
        )
        with self._cond:
            state.batch = None
            # Counted before any handler is told, so that the metrics hold the work once a client has its answer.
            for piece in batch:
                if self.observer:
                    self.observer.dropped(piece.work * undone, piece.ticket.drop_reason or "deadline")
            for piece in batch:
                if not piece.ticket.finished:  # past its deadline, its handler not told yet
                    error = DeadlineExceededError("deadline passed while its batch ran")
                    self._fail_locked(piece.ticket, error, "deadline")

    # ----- helpers (caller holds the lock) -----
    def _fits_locked(self, units: int, work: float) -> bool:
        return (
            self._queued_units + units <= self.max_queue_units
            and self._queued_work + work <= self.max_queue_work + 1e-9
        )

    def _backlog_locked(self) -> Backlog:
        now = self.clock()
        ordered = service_order(self._pending, now, self.aging_s)
        batches = [
            PlannedBatch(sum(p.count for p in b), sum(p.work for p in b), self.batch_cost(b))
            for b in plan_batches(ordered, self.max_batch_units)
        ]
        running = [(w.batch_cost, now - w.started_at) if w.batch else None for w in self._workers]
        rates = [w.throughput.rate for w in self._workers]
        return Backlog(self._queued_units, self._queued_work, batches, running, rates)

    def _drop_expired_locked(self) -> None:
        now = self.clock()
        for ticket in [t for t in self._pending if t.deadline <= now]:
            self._fail_locked(ticket, DeadlineExceededError("deadline passed while queued"), "deadline")

    def _fail_locked(self, ticket: Ticket, error: BaseException, reason: str) -> None:
        if ticket.finished:
            return
        ticket.finished = True
        ticket.drop_reason = reason
        self._remove_locked(ticket)
        self._notify(ticket, None, error)

    def _remove_locked(self, ticket: Ticket) -> None:
        if ticket in self._pending:
            self._pending.remove(ticket)
            work = ticket.remaining * ticket.cost
            self._set_queued(self._queued_units - ticket.remaining, self._queued_work - work)
            if self.observer and ticket.drop_reason != "failed":
                self.observer.dropped(work, ticket.drop_reason or "cancelled")
            ticket.next_index = ticket.size

    def _set_queued(self, units: int, work: float) -> None:
        self._queued_units = units
        self._queued_work = max(work, 0.0) if units else 0.0  # no float dust on an empty queue
        if self.observer:
            self.observer.queued(units, self._queued_work)

    def _notify(self, ticket: Ticket, result: TicketResult | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
            ticket.loop.call_soon_threadsafe(_resolve, ticket.future, result, error)
