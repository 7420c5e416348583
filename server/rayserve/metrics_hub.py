"""Every replica's Prometheus series in one place, so one scrape of the ingress sees the whole application.

Model replicas have no HTTP port of their own: each pushes a snapshot of its series (`metrics.snapshot`) to
the `MetricsHub` deployment every `PUSH_INTERVAL_S`; the ingress's /metrics merges the hub's snapshots with
its own, each sample labelled with the replica it came from (`metrics.render_replicas`). A replica that stops
pushing (killed, scaled down) drops out after `STALE_AFTER_S`, like a pod that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ddgan.server.metrics import ServerMetrics, Snapshot, snapshot

logger = logging.getLogger(__name__)

PUSH_INTERVAL_S = 1.0
STALE_AFTER_S = 10.0


class MetricsHub:
    """The Serve deployment (one replica) that holds the latest snapshot of every replica."""

    def __init__(self) -> None:
        self.snapshots: dict[str, tuple[float, Snapshot]] = {}

    def push(self, replica: str, families: Snapshot) -> None:
        self.snapshots[replica] = (time.monotonic(), families)

    def forget(self, replica: str) -> None:
        self.snapshots.pop(replica, None)

    def collect(self) -> dict[str, Snapshot]:
        now = time.monotonic()
        self.snapshots = {r: v for r, v in self.snapshots.items() if now - v[0] <= STALE_AFTER_S}
        return {replica: families for replica, (_, families) in self.snapshots.items()}


class MetricsPusher:
    """Pushes one process's series to the hub on its event loop until stopped."""

    def __init__(self, hub: Any, replica: str, metrics: ServerMetrics) -> None:
        self.hub = hub
        self.replica = replica
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"metrics-push-{self.replica}")

    async def push_now(self) -> None:
        await self.hub.push.remote(self.replica, snapshot(self.metrics))

    async def _run(self) -> None:
        while True:
            try:
                await self.push_now()
            except Exception as exc:  # the hub restarting must not take a replica down
                logger.warning("%s: metrics push failed: %s", self.replica, exc)
            await asyncio.sleep(PUSH_INTERVAL_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.hub.forget.remote(self.replica), 5)
