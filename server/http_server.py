"""`ddgan serve`'s uvicorn server: one shutdown deadline from SIGTERM to exit.

uvicorn waits for open connections (`timeout_graceful_shutdown`), cancels what still runs, and only then runs the
app's lifespan shutdown. `ShutdownAwareServer` tells the engine when the signal arrives, so the engine refuses
new work at once and, at `now + shutdown_timeout_s`, answers every request still waiting with 503
`shutting_down` and stops its batches; uvicorn's own limit (a little later) is only the backstop.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

import uvicorn

# Past the engine's deadline: time for the 503 answers to be written before uvicorn cancels what is left.
ANSWER_GRACE_S = 1.0


class ShutdownAwareServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, begin_shutdown: Callable[[float], object], timeout_s: float) -> None:
        super().__init__(config)
        self._begin_shutdown = begin_shutdown
        self._timeout_s = timeout_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_shutdown(time.monotonic() + self._timeout_s)
        await super().shutdown(sockets)


def uvicorn_shutdown_timeout(timeout_s: float) -> int:
    """uvicorn's limit (whole seconds) for its connection wait: the engine's deadline plus the answer grace."""
    return math.ceil(timeout_s + ANSWER_GRACE_S)
