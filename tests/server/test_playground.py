"""The web playground (GET /): the page itself, and a real headless Chromium using it against `ddgan serve` with
the bundled models/mnist (skipped where Debian's `chromium` is absent; .ci/run installs it).

`DDGAN_PLAYGROUND_SCREENSHOT=docs/playground.png` keeps the browser's screenshot there (how the README's is made).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ddgan.server.app import create_app
from ddgan.server.settings import ServerSettings
from tests.server.cdp import CHROMIUM, Browser
from tests.server.test_uvicorn import REPO, Server

STATUS = "document.getElementById('status')"
# The page's state once an action ended: "done" or "error" (falsy while it runs).
FINISHED = f"['done', 'error'].includes({STATUS}.dataset.state) && {STATUS}.dataset.state"


def test_page_is_self_contained_and_in_the_schema(registry_path):
    app = create_app(ServerSettings(registry=registry_path))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/")

    page = asyncio.run(get())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing loaded from elsewhere
    for call in ("/v1/models", "/generate", "/v1/jobs", "/events", "Server-Timing", "/v1/images/"):
        assert call in html, call
    assert "/" in app.openapi()["paths"]


def bundled_registry(root: Path) -> Path:
    """The bundled mnist DDGAN and DDPM; the DDPM at 50 steps (not its 1000) and small batches: a quick comparison."""
    text = f"""
[[models]]
dataset = "mnist"
sampler = "ddgan"
path = "{REPO / "models" / "mnist"}"
device = "cpu"
max_batch_images = 4

[[models]]
dataset = "mnist"
sampler = "ddpm"
path = "{REPO / "models" / "mnist-ddpm"}"
device = "cpu"
max_batch_images = 2
max_queue_images = 32
default_steps = 50
"""
    path = root / "registry.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("playground")
    running = Server(bundled_registry(root), root / "ddgan.server.log")
    try:
        running.wait_ready(300)
        yield running
    finally:
        running.stop()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_playground_in_headless_chromium(server, tmp_path):
    browser = Browser.start(tmp_path / "profile")
    try:
        browser.call("Network.enable")
        browser.call("Page.navigate", url=server.url + "/")
        browser.wait_for(f"{STATUS}?.dataset.state === 'ready'")
        assert browser.evaluate("[...document.querySelectorAll('#sampler option')].map(o => o.value)") == [
            "ddgan", "ddpm",
        ]  # fmt: skip

        # A job: followed to the end where the server has the jobs API, a clear message where it has not.
        set_fields(browser, n=2, seed=3)
        browser.evaluate("document.getElementById('job').click()")
        state = browser.wait_for(FINISHED, 300)
        if "/v1/jobs" in httpx.get(server.url + "/openapi.json").json()["paths"]:
            assert state == "done", browser.evaluate(STATUS + ".textContent")
            assert "succeeded" in browser.evaluate("document.getElementById('job-state').textContent")
        else:
            assert "no jobs API" in browser.evaluate(STATUS + ".textContent")

        browser.evaluate("document.getElementById('compare').click()")
        state = browser.wait_for(FINISHED, 300)
        assert state == "done", browser.evaluate(STATUS + ".textContent")
        rows = browser.evaluate("[...document.querySelectorAll('#comparison tbody tr')].map(r => r.cells[1].innerText)")
        assert rows == ["4", "50"]  # DDGAN's T, the DDPM's default steps
        assert "DDPM took" in browser.evaluate("document.getElementById('ratio').textContent")

        set_fields(browser, n=16, seed=7)
        browser.evaluate("document.getElementById('generate').click()")
        state = browser.wait_for(FINISHED)
        assert state == "done", browser.evaluate(STATUS + ".textContent")
        shown = browser.evaluate("[...document.querySelectorAll('#grid img')].map(i => [i.complete, i.naturalWidth])")
        assert shown == [[True, 32]] * 16
        captions = browser.evaluate("[...document.querySelectorAll('#grid figcaption')].map(c => c.textContent)")
        assert captions == [str(seed) for seed in range(7, 23)]
        latency = browser.evaluate("document.getElementById('latency').textContent")
        found = dict(re.findall(r"(queue|inference|PNG) ([\d.]+) ms", latency))
        assert set(found) == {"queue", "inference", "PNG"} and float(found["inference"]) > 0, latency
        # The displayed image is the server's content-addressed image of that seed.
        first = browser.evaluate("document.querySelector('#grid img').src").removeprefix("data:image/png;base64,")
        assert base64.b64decode(first) == httpx.get(server.url + "/v1/images/mnist/ddgan/7.png").content

        sent = [e for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
        loaded = {e["params"]["request"]["url"] for e in sent}
        assert loaded and all(url.startswith((server.url, "data:")) for url in loaded), loaded
        screenshot = browser.screenshot()
    finally:
        browser.close()
    picture = Image.open(io.BytesIO(screenshot))
    assert picture.format == "PNG" and picture.size[0] >= 1000
    if target := os.environ.get("DDGAN_PLAYGROUND_SCREENSHOT"):
        Path(target).write_bytes(screenshot)


def set_fields(browser: Browser, **values: int) -> None:
    for name, value in values.items():
        browser.evaluate(f"document.getElementById({name!r}).value = {value}")
