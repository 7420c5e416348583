"""Retry-After: measured throughput (padded cost), the planned batches, the closed form, jitter; a fake clock."""

from __future__ import annotations

import asyncio
import math
import random
import threading

import pytest

from ddgan.server.backlog import Backlog, PlannedBatch, Throughput, retry_after_s, seconds_until_room
from ddgan.server.batching import BatchQueue, QueueFullError, Worker
from ddgan.server.tickets import Slice, requested_work


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_is_seeded_by_warm_up_until_real_batches_replace_it():
    rate = Throughput()
    assert rate.rate is None
    rate.seed(cost=100, seconds=10)
    assert rate.rate == 10
    rate.record(cost=20, seconds=4)  # the first real batch replaces the seed entirely
    assert rate.rate == 5
    rate.record(cost=90, seconds=6)  # time-weighted: (20 + 90) / (4 + 6)
    assert rate.rate == pytest.approx(11)
    for _ in range(8):  # the window keeps the last 8 batches
        rate.record(cost=30, seconds=1)
    assert rate.rate == 30


def test_one_worker_closed_form():
    batches = [PlannedBatch(units=2, work=10, cost=20), PlannedBatch(2, 10, 20), PlannedBatch(2, 10, 40)]
    backlog = Backlog(queued_units=6, queued_work=30, batches=batches, running=[(20, 0.5)], rates=[10])
    # Running batch ends at 20/10 - 0.5 = 1.5 s; B_j is taken at 1.5 + (c_1 + ... + c_{j-1}) / 10.
    assert seconds_until_room(backlog, units=1, work=5, max_units=6, max_work=1000) == 1.5  # after B_1
    assert seconds_until_room(backlog, units=3, work=15, max_units=6, max_work=1000) == 1.5 + 2.0  # after B_2
    assert seconds_until_room(backlog, units=6, work=30, max_units=6, max_work=1000) == 1.5 + 2.0 + 2.0  # all
    # The work bound alone: 30 queued + 25 > 40 until B_2 is taken.
    assert seconds_until_room(backlog, units=1, work=25, max_units=100, max_work=40) == 1.5 + 2.0
    # A batch that overran its estimate ends "now", not in the past.
    late = Backlog(6, 30, batches, running=[(20, 9.0)], rates=[10])
    assert seconds_until_room(late, units=1, work=5, max_units=6, max_work=1000) == 0.0
    unmeasured = Backlog(6, 30, batches, running=[None], rates=[None])
    assert seconds_until_room(unmeasured, units=1, work=5, max_units=6, max_work=1000) is None


def test_two_workers_take_batches_as_each_frees():
    batches = [PlannedBatch(1, 1, 20)] * 4
    # Worker 0 frees at 1 s, worker 1 at 3 s (each batch 2 s at 10/s); an unmeasured third runs like the others.
    backlog = Backlog(4, 4, batches, running=[(10, 0), (30, 0)], rates=[10, 10])
    takes = [seconds_until_room(backlog, units=n, work=n, max_units=4, max_work=99) for n in (1, 2, 3, 4)]
    assert takes == [1.0, 3.0, 3.0, 5.0]  # B_1 on worker 0 at 1; B_2 at 3 (both free); B_3 at 3; B_4 at 5
    idle_third = Backlog(4, 4, batches, running=[(10, 0), (30, 0), None], rates=[10, 10, None])
    assert seconds_until_room(idle_third, units=1, work=1, max_units=4, max_work=99) == 0.0


def test_retry_after_jitter_spreads_clients_over_at_least_a_second():
    rng = random.Random(7)
    values = {retry_after_s(4.7, rng) for _ in range(200)}
    assert values == {5, 6}  # ceil(4.7 + U(0, max(1, 0.94)))
    long = [retry_after_s(100.0, rng) for _ in range(200)]
    assert min(long) >= 100 and max(long) <= 120 and len(set(long)) > 10  # 20 % spread
    assert {retry_after_s(0.0, rng) for _ in range(100)} == {1}
    assert 1 <= retry_after_s(None, rng) <= 2  # nothing measured yet


class Gated:
    """A run_batch that blocks until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, slices: list[Slice], progress) -> list[list[int]]:
        self.entered.set()
        self.release.wait(10)
        return [piece.payload[piece.start : piece.start + piece.count] for piece in slices]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_full_queue_answers_the_closed_form_on_a_fake_clock():
    clock, gated = FakeClock(), Gated()

    def padded(slices):  # every batch computes twice what it asks (padding), and the rate counts that
        return 2 * requested_work(slices)

    queue = BatchQueue(
        "test",
        [Worker("cpu", gated, prepare=lambda: (100.0, 10.0))],  # warm-up: 10 cost units per second
        max_batch_units=2,
        max_wait_s=0.0,
        max_queue_units=6,
        batch_cost=padded,
        clock=clock,
        rng=random.Random(1),
    )
    queue.start()
    loop = asyncio.get_running_loop()
    running = queue.submit([1, 2], 2, 5.0, deadline=1e9)
    await loop.run_in_executor(None, gated.entered.wait, 5)
    waiting = [queue.submit([i, i], 2, 5.0, deadline=1e9) for i in (3, 4, 5)]
    clock.now = 0.5
    twin = random.Random(1)
    with pytest.raises(QueueFullError) as one:
        queue.submit([9], 1, 5.0, deadline=1e9)
    # The running batch costs 2 x 10 = 20 at 10/s: free at 2.0 - 0.5 = 1.5 s, then B_1 is taken and 1 fits.
    assert one.value.retry_after_s == math.ceil(1.5 + twin.uniform(0, 1.0))
    with pytest.raises(QueueFullError) as three:
        queue.submit([9, 9, 9], 3, 5.0, deadline=1e9)
    assert three.value.retry_after_s == math.ceil(1.5 + 20 / 10 + twin.uniform(0, 1.0))
    assert queue.seconds_until_room(5, 5.0) == pytest.approx(1.5 + 2 * 20 / 10)  # B_3 taken after B_1, B_2
    clock.now = 4.0  # the running batch took 4 s for 20 cost units: the measured 5/s replaces the warm-up's
    gated.release.set()
    await asyncio.gather(running.future, *(t.future for t in waiting))
    blocker = queue.submit([1, 2], 2, 5.0, deadline=1e9)
    gated.entered.clear()
    gated.release.clear()
    await loop.run_in_executor(None, gated.entered.wait, 5)
    more = [queue.submit([i, i], 2, 5.0, deadline=1e9) for i in (3, 4, 5)]
    assert queue.seconds_until_room(1, 5.0) == pytest.approx(20 / 5)  # started at 4.0, now 4.0
    gated.release.set()
    await asyncio.gather(blocker.future, *(t.future for t in more))
    queue.close(5)
