"""Pure-ASGI middleware (no BaseHTTPMiddleware: it would hide client disconnects from the handlers).

`RequestContextMiddleware`: a request id on every response (`X-Request-ID`, the client's if it is sane),
`Server-Timing` on every response, and any unexpected exception answered as a 500 in the one error shape.
`BodySizeLimitMiddleware`: bodies over the limit answer 413, by Content-Length or while streaming; a body that
stalls for longer than the body timeout answers 408; a JSON body nested deeper than the depth limit answers
400 `bad_json` before it is parsed (so the answer does not depend on the interpreter's recursion limit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ddgan.server.errors import APIError, error_body

logger = logging.getLogger(__name__)

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_JSON_STRUCTURE = re.compile(rb'[\[\]{}"\\]')
_QUOTE, _BACKSLASH, _OPENERS, _CLOSERS = ord('"'), ord("\\"), b"[{", b"]}"


class JSONDepthScanner:
    """Tracks the bracket depth of a JSON text fed in chunks, outside strings; the text need not be valid."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.depth = 0
        self.in_string = False
        self.skip_next = False  # the previous chunk ended on a backslash inside a string

    def feed(self, chunk: bytes) -> bool:
        """False once the text has gone deeper than `max_depth`."""
        pos = 0
        if self.skip_next and chunk:
            self.skip_next, pos = False, 1
        while (match := _JSON_STRUCTURE.search(chunk, pos)) is not None:
            char, pos = chunk[match.start()], match.end()
            if self.in_string:
                if char == _QUOTE:
                    self.in_string = False
                elif char == _BACKSLASH:  # the escaped byte is never structure
                    if pos == len(chunk):
                        self.skip_next = True
                    pos += 1
            elif char == _QUOTE:
                self.in_string = True
            elif char in _OPENERS:
                self.depth += 1
                if self.depth > self.max_depth:
                    return False
            elif char in _CLOSERS:
                self.depth -= 1
        return True


async def _send_error(send: Send, status: int, type: str, message: str, request_id: str | None) -> None:
    body = json.dumps(error_body(status, type, message, request_id)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        response_started = False

        async def send_with_context(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                timings: list[tuple[str, float]] = list(state.get("server_timing", []))
                timings.append(("total", (time.perf_counter() - started) * 1000))
                header = ", ".join(f"{name};dur={ms:.2f}" for name, ms in timings)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers += [(b"x-request-id", request_id.encode()), (b"server-timing", header.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its shutdown wait ends: answer in our shape
            # (not uvicorn's 500 text/plain); the task ends here, nothing else waits for it.
            if not response_started:
                message = "the server shut down before this request finished"
                await _send_error(send_with_context, 503, "shutting_down", message, request_id)
        except Exception:
            logger.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope["path"], request_id)
            if not response_started:
                await _send_error(send_with_context, 500, "internal_error", "internal server error", request_id)


class BodySizeLimitMiddleware:
    """`on_rejected(path, status)` counts a request answered here (it never reaches a route)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_timeout_s: float,
        max_json_depth: int,
        on_rejected: Callable[[str, int], None],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.body_timeout_s = body_timeout_s
        self.on_rejected = on_rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            request_id = scope.get("state", {}).get("request_id")
            await _send_error(send, 413, "payload_too_large", f"request body exceeds {limit} bytes", request_id)
            self.on_rejected(scope["path"], 413)
            return
        received = 0
        body_complete = False
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
        is_json = content_type == b"application/json" or content_type.endswith(b"+json")
        depth = JSONDepthScanner(self.max_json_depth) if is_json else None

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later receives wait for the disconnect: no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"request body stalled for {self.body_timeout_s:g} s") from None
            if message["type"] == "http.request":
                body_complete = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPExceptions from body reading; the handler renders the error shape.
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
                if depth is not None and not depth.feed(message.get("body", b"")):
                    reason = f"request body is not valid JSON: nested deeper than {depth.max_depth} levels"
                    raise APIError(400, "bad_json", reason)
            return message

        await self.app(scope, limited_receive, send)
