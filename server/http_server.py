"""`ddgan serve`'s uvicorn server: HTTP limits uvicorn lacks, and one shutdown deadline from SIGTERM to exit.

`limited_http_protocol` is uvicorn's httptools protocol with a limit on the size of a request's head (request
line + headers, answered 431) and on the time its head may take to arrive (408; slowloris clients that open
connections and trickle headers). Keep-alive idle time and the number of concurrent connections are uvicorn's
own settings; past the connection limit uvicorn's plain-text 503 is replaced by our JSON `overloaded` error with a
jittered Retry-After, and the health probes (`/healthz`, `/readyz`) are still answered (an orchestrator must not
restart a server for being busy). A stalled body is timed out by the app
(`server.middleware.BodySizeLimitMiddleware`).

uvicorn waits for open connections (`timeout_graceful_shutdown`), cancels what still runs, and only then runs the
app's lifespan shutdown. `ShutdownAwareServer` tells the engine when the signal arrives, so the engine refuses
new work at once and, at `now + shutdown_timeout_s`, answers every request still waiting with 503
`shutting_down` and stops its batches; uvicorn's own limit (a little later) is only the backstop.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ddgan.server.errors import error_body

# Past the engine's deadline: time for the 503 answers to be written before uvicorn cancels what is left.
ANSWER_GRACE_S = 1.0
# Answered even past the connection limit: they do no work, and failing them would get a busy server killed.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Retry-After past the connection limit: a connection frees within about one request's time; the jitter spreads
# the retries of a burst over a few seconds instead of one instant.
CONNECTION_RETRY_AFTER_S = (1, 5)


async def connection_limit_reached(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's `limit_concurrency` answer, in the server's error shape."""
    body = json.dumps(
        error_body(503, "overloaded", "the server is at its connection limit (DDGAN_MAX_CONNECTIONS); retry", None)
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(random.randint(*CONNECTION_RETRY_AFTER_S)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


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


class _LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 16 * 1024
    head_timeout_s = 10.0
    on_refused: Callable[[str, int], object] | None = None  # (path, status) of a connection-limit refusal

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = True  # between requests: the next bytes belong to a request head
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a client that connects and sends nothing is timed out too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._arm_head_timer()
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
            if self._head_bytes > self.max_head_bytes:
                # Refused before the parser buffers it: memory stays bounded by the limit plus one read.
                self._refuse(
                    431, "request_header_fields_too_large", f"request head exceeds {self.max_head_bytes} bytes"
                )
                return
            if end < 0:
                self._tail = window[-3:]
            else:
                self._awaiting_head = False
                self._cancel_head_timer()
        super().data_received(data)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is service_unavailable:  # uvicorn's limit_concurrency refusal
            path = cycle.scope["path"]
            if path in PROBE_PATHS:
                app = self.app
            else:
                app = connection_limit_reached
                if self.on_refused is not None:  # counted like every other answer, though no app code runs
                    self.on_refused(path, 503)
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head, self._head_bytes, self._tail = True, 0, b""

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            if self._head_bytes:  # a request started but its head never completed
                self._refuse(408, "request_timeout", f"request head not received within {self.head_timeout_s:g} s")
            else:
                self.transport.close()

    def _refuse(self, status: int, kind: str, message: str) -> None:
        self._cancel_head_timer()
        self._awaiting_head = False
        body = json.dumps(error_body(status, kind, message, None)).encode()
        reason = {408: "Request Timeout", 431: "Request Header Fields Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()


def limited_http_protocol(
    max_head_bytes: int, head_timeout_s: float, on_refused: Callable[[str, int], object] | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol refusing request heads over `max_head_bytes` or slower than `head_timeout_s`.

    `on_refused(path, status)` is told of each request answered 503 at the connection limit.
    """
    limits = {
        "max_head_bytes": max_head_bytes,
        "head_timeout_s": head_timeout_s,
        "on_refused": staticmethod(on_refused) if on_refused is not None else None,
    }
    return type("LimitedHttpToolsProtocol", (_LimitedHttpToolsProtocol,), limits)
