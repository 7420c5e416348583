"""HTTP limits of `ddgan serve` against a real uvicorn: head size, slow heads, stalled bodies, idle and many
connections. Raw sockets, because an HTTP client would never send what an attacker does."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server.test_uvicorn import Server, uvicorn_registry

HEAD_TIMEOUT_S = 2.0
LIMITS = {
    "DDGAN_MAX_HEADER_BYTES": "4096",
    "DDGAN_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
    "DDGAN_BODY_TIMEOUT_S": "1",
    "DDGAN_KEEP_ALIVE_TIMEOUT_S": "1",
    "DDGAN_MAX_CONNECTIONS": "24",
}


@pytest.fixture(scope="module")
def limited(tiny_models, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("limits") / "server.log"
    running = Server(uvicorn_registry(tiny_models), log, env=LIMITS, args=["--no-warmup"])
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def connect(server: Server) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return raw


def read_until_closed(raw: socket.socket) -> bytes:
    chunks = []
    while chunk := raw.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(raw: socket.socket) -> bytes:
    """One response: its head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += raw.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
    )
    while len(body) < length:
        body += raw.recv(65536)
    return head + b"\r\n\r\n" + body


def error_answer(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)["error"]


def test_a_big_header_is_refused_and_a_normal_one_served(limited):
    ok = httpx.get(limited.url + "/healthz", headers={"x-pad": "a" * 3000})
    assert ok.status_code == 200
    big = httpx.get(limited.url + "/healthz", headers={"x-pad": "a" * 8000})
    assert big.status_code == 431 and big.json()["error"]["type"] == "request_header_fields_too_large"


def test_an_endless_header_stream_is_cut_off_at_the_limit(limited):
    with connect(limited) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        with pytest.raises(OSError):  # the server closed the connection: broken pipe / reset
            for _ in range(2000):  # up to 128 MB
                raw.sendall(b"a" * 65536)
                sent += 65536
        assert sent < 4 * 1024 * 1024  # refused within a few reads, not after buffering it all
    assert httpx.get(limited.url + "/healthz").status_code == 200


def test_half_sent_requests_are_closed_within_the_head_timeout(limited):
    sockets = [connect(limited) for _ in range(20)]
    started = time.monotonic()
    for raw in sockets:
        raw.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    answers = [read_until_closed(raw) for raw in sockets]
    elapsed = time.monotonic() - started
    for raw in sockets:
        raw.close()
    assert elapsed < HEAD_TIMEOUT_S + 3, elapsed
    for data in answers:
        status, error = error_answer(data)
        assert status == 408 and error["type"] == "request_timeout" and "head" in error["message"]


def test_a_stalled_body_is_timed_out_with_a_clear_error(limited):
    with connect(limited) as raw:
        raw.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"dataset": '
        )
        started = time.monotonic()
        raw.settimeout(10)
        data = read_response(raw)
        assert time.monotonic() - started < 5
    status, error = error_answer(data)
    assert status == 408 and error["type"] == "request_timeout" and "body stalled" in error["message"]


def test_idle_connections_close_and_excess_connections_are_refused(limited):
    with connect(limited) as idle:  # connected, never sends: closed at the head timeout
        started = time.monotonic()
        assert read_until_closed(idle) == b"" and time.monotonic() - started < HEAD_TIMEOUT_S + 3
    with connect(limited) as kept:  # keep-alive after a response: closed at the keep-alive timeout
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        assert b" 200 " in read_until_closed(kept).split(b"\r\n")[0]
        assert time.monotonic() - started < 1 + 3
    held = [connect(limited) for _ in range(30)]  # over the limit of 24 (a loaded machine accepts them late)
    try:
        for raw in held:
            raw.sendall(b"GET /healthz HTTP/1.1\r\n")  # a request started: held until the head timeout
        time.sleep(0.3)
        refused = httpx.post(limited.url + "/generate", json={"dataset": "mnist", "n": 1, "seed": 1})
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["type"] == "overloaded" and 1 <= int(refused.headers["retry-after"]) <= 5
        # the probes are answered past the limit: an orchestrator must not restart a server for being busy
        assert httpx.get(limited.url + "/healthz").status_code == 200
        assert httpx.get(limited.url + "/readyz").status_code == 200
    finally:
        for raw in held:
            raw.close()
    give_up = time.monotonic() + 10
    while httpx.get(limited.url + "/healthz").status_code != 200:
        assert time.monotonic() < give_up, "the server never took connections again"
        time.sleep(0.2)
    metrics = httpx.get(limited.url + "/metrics").text  # the refusal is counted though no route ran
    assert 'ddgan_requests_total{model="unknown",sampler="unknown",status="503"} 1.0' in metrics
