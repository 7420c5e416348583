"""A scripted stand-in for the server's HTTP API (httpx.MockTransport): error answers, 503s and the jobs API.

The jobs routes follow the server's contract (POST /v1/jobs → 202 + Location; GET /v1/jobs/{id}; its /result,
/events as server-sent `event: job` with the status as JSON data; DELETE cancels), so the client's job methods
are tested without timing: each GET of a job advances it one scripted state.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

PNG = b"\x89PNG\r\n\x1a\nfake"


def error(status: int, type: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"error": {"type": type, "message": message, "status": status, "request_id": "req-1", **extra}}
    return httpx.Response(status, json=body, headers={"x-request-id": "req-1", **(headers or {})})


def generation(seed: int, n: int, sampler: str = "ddgan") -> dict[str, Any]:
    return {
        "request_id": "req-1", "model": "mnist", "sampler": sampler, "steps": 4, "seed": seed,
        "seeds": list(range(seed, seed + n)), "width": 32, "height": 32, "channels": 1, "backend": "torch",
        "device": "cpu", "random_weights": False, "cached": 0,
        "images": [base64.b64encode(PNG + bytes([i])).decode() for i in range(n)],
        "latency_ms": {"queue": 1.0, "inference": 2.0, "png_encode": 0.5, "total": 4.0},
    }  # fmt: skip


def status(job_id: str, state: str, done: int, total: int = 4, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": job_id, "state": state, "model": "mnist", "sampler": "ddpm", "n": 2, "seed": 7, "steps": 2,
        "progress": {"images_done": done // 2, "images_total": 2, "steps_done": done, "steps_total": total,
                     "fraction": done / total},
        "timings": {"created_at": 1.0}, "error": error,
        "result_url": f"/v1/jobs/{job_id}/result" if state == "succeeded" else None,
    }  # fmt: skip


@dataclass
class FakeJobs:
    """One job "j1" that runs through `script` (a list of (state, steps_done)); `events=False`: no SSE route."""

    script: list[tuple[str, int]] = field(
        default_factory=lambda: [("queued", 0), ("running", 2), ("running", 3), ("succeeded", 4)]
    )
    events: bool = True
    position: int = 0
    cancelled: bool = False
    seen: list[str] = field(default_factory=list)

    def current(self) -> dict[str, Any]:
        if self.cancelled:
            return status("j1", "cancelled", self.script[self.position][1])
        state, done = self.script[self.position]
        failure = {"type": "generation_failed", "message": "boom", "status": 500} if state == "failed" else None
        return status("j1", state, done, error=failure)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.seen.append(f"{method} {path}")
        if method == "POST" and path == "/v1/jobs":
            body = json.loads(request.content)
            assert body["dataset"] == "mnist"
            return httpx.Response(202, json=self.current(), headers={"location": "/v1/jobs/j1"})
        if not path.startswith("/v1/jobs/j1"):
            return error(404, "job_not_found", "no job")
        if path.endswith("/events"):
            if not self.events:
                return error(404, "not_found", "Not Found")
            lines = [": keep-alive", ""]
            for index in range(self.position, len(self.script)):
                self.position = index
                lines += ["event: job", f"id: {index}", f"data: {json.dumps(self.current())}", ""]
            text = "\n".join(lines) + "\n"  # every event ends with a blank line
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        if path.endswith("/result"):
            if self.current()["state"] != "succeeded":
                return error(409, "job_not_finished", "not done")
            return httpx.Response(200, json=generation(7, 2, "ddpm"))
        if method == "DELETE":
            self.cancelled = True
            return httpx.Response(200, json=self.current())
        answer = self.current()
        self.position = min(self.position + 1, len(self.script) - 1)
        return httpx.Response(200, json=answer)


def answers(*responses: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> Callable[..., httpx.Response]:
    """A handler giving these responses in turn (the last one for every later request)."""
    calls: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = responses[min(len(calls), len(responses)) - 1]
        if callable(answer):
            return answer(request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)  # a fresh copy

    handle.calls = calls  # type: ignore[attr-defined]
    return handle
