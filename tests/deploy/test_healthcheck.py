"""docker/healthcheck.py as Docker runs it: exit 0 only when /readyz answers 2xx."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.deploy import live
from tests.deploy.promql import DOCKER

HEALTHCHECK = DOCKER / "healthcheck.py"


@contextmanager
def readiness_server(status: int) -> Iterator[tuple[int, list[str]]]:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            paths.append(self.path)
            body = b'{"ready": %s}' % (b"true" if status == 200 else b"false")
            self.send_response(status if self.path == "/readyz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], paths
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DDGAN_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=clean | env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_exit_code_follows_readyz(status: int, exit_code: int) -> None:
    with readiness_server(status) as (port, paths):
        result = run_healthcheck({"DDGAN_PORT": str(port)})
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert paths == ["/readyz"]
    assert f"/readyz: {status}" in result.stdout


def test_unreachable_server_is_unhealthy() -> None:
    result = run_healthcheck({"DDGAN_HEALTHCHECK_URL": f"http://127.0.0.1:{live.free_port()}/readyz"})
    assert result.returncode == 1
    assert "Connection refused" in result.stdout or "refused" in result.stdout.lower()
