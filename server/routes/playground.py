"""GET /: the web playground, one self-contained HTML page (server/playground.html) over this server's API."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["playground"])

# The page loads nothing from elsewhere: the policy makes the browser refuse it if it ever tried.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def page() -> str:
    return resources.files("ddgan.server").joinpath("playground.html").read_text(encoding="utf-8")


@router.get(
    "/",
    response_class=HTMLResponse,
    summary="The web playground: pick a model, generate, see the grid, the latency split and jobs' progress",
)
async def playground() -> HTMLResponse:
    return HTMLResponse(page(), headers=_HEADERS)
