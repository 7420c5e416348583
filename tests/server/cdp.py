"""Headless Chromium driven over the DevTools protocol (a websocket), for the playground test: no downloads.

`Browser.start()` runs Debian's `chromium` on a private profile with the debugging port on loopback; `call`
sends one protocol command and waits for its answer, keeping the events that arrive meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)
# No network beyond loopback: no sync, updates, metrics or first-run pages.
QUIET = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--metrics-recording-only", "--mute-audio", "--window-size=1280,900",
]  # fmt: skip


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], socket: ClientConnection, stack: contextlib.ExitStack) -> None:
        self.process = process
        self.socket = socket
        self._stack = stack
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    @classmethod
    def start(cls, profile: Path, timeout_s: float = 120) -> Browser:
        assert CHROMIUM is not None
        command = [CHROMIUM, *QUIET, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        log = (profile.parent / "chromium.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        give_up = time.monotonic() + timeout_s
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if process.poll() is not None or time.monotonic() > give_up:
                process.kill()
                raise BrowserError(f"chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        stack = contextlib.ExitStack()
        socket = stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30))
        return cls(process, socket, stack)

    def call(self, method: str, timeout_s: float = 60, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        ident = self._next_id
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        give_up = time.monotonic() + timeout_s
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, give_up - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 120) -> Any:
        """Until `expression` is truthy in the page (evaluations during a navigation are retried)."""
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > give_up:
                raise BrowserError(f"not true after {timeout_s} s: {expression}")
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone: the process is stopped below either way
            self.call("Browser.close", timeout_s=10)
        self._stack.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
