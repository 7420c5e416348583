"""The I/O-free half of the client, shared by `Client` and `AsyncClient`: request bodies, response parsing,
error construction, the retry policy and server-sent events.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from ddgan.client.errors import APIError, error_class
from ddgan.client.models import Image

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 300.0  # a 1000-step DDPM request can run for minutes on a CPU


@dataclass(frozen=True)
class RetryPolicy:
    """How 503s are retried: at most `attempts` tries in all, waiting what `Retry-After` says (or an exponential
    backoff without one) plus up to `jitter` of it, so that many clients do not come back at once. A wait longer
    than `max_wait_s` is not waited: the 503 is raised."""

    attempts: int = 4
    backoff_s: float = 0.5
    jitter: float = 0.25
    max_wait_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float | None:
        """Seconds to wait before try `attempt + 1` (attempt counts from 1), or None to give up."""
        if attempt >= self.attempts:
            return None
        base = retry_after_s if retry_after_s is not None else self.backoff_s * 2 ** (attempt - 1)
        if base > self.max_wait_s:
            return None
        return min(self.max_wait_s, base * (1 + self.jitter * rng.random()))


NO_RETRIES = RetryPolicy(attempts=1)


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def api_error(response: httpx.Response) -> APIError:
    """The typed error of an error answer: from the server's error shape, or from the bare status (a proxy's)."""
    status, request_id = response.status_code, response.headers.get("x-request-id")
    kind, message, details = f"http_{status}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
        if response.text.strip():
            message = response.text.strip()[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        kind = str(error.get("type", kind))
        message = str(error.get("message", message))
        request_id = error.get("request_id") or request_id
        details = error.get("details")
    return error_class(status, kind)(
        status, kind, message, request_id=request_id, details=details, retry_after_s=retry_after(response)
    )


def generate_body(
    dataset: str, n: int, seed: int | None, sampler: str, steps: int | None, timeout_s: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"dataset": dataset, "n": n, "sampler": sampler}
    for name, value in (("seed", seed), ("steps", steps), ("timeout_s", timeout_s)):
        if value is not None:
            body[name] = value
    return body


def image_path(dataset: str, seed: int, sampler: str) -> str:
    return f"/v1/images/{dataset}/{sampler}/{seed}.png"


def image_of(response: httpx.Response, seed: int) -> Image:
    return Image(
        png=response.content,
        etag=response.headers.get("etag", ""),
        seed=seed,
        steps=int(response.headers.get("x-steps", 0)),
        cache=response.headers.get("x-cache", ""),
    )


def headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class EventParser:
    """Server-sent events (the WHATWG `text/event-stream` format): feed lines, get `(event, data)` pairs."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str, str]]:
        if line == "":
            if self._data:
                yield self._event, "\n".join(self._data)
            self._event, self._data = "message", []
            return
        if line.startswith(":"):
            return  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)


def job_event(event: str, data: str) -> dict[str, Any] | None:
    """The job status an event carries (`event: job`, JSON data), None for any other event."""
    if event not in ("job", "message"):
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and "state" in parsed else None
