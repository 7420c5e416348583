"""POST /generate: validate the body, negotiate the media type, hand the rest to the serving layer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ddgan.server.dependencies import ApiKey, ServiceDep
from ddgan.server.encoding import PNG, ZIP, negotiate
from ddgan.server.engine import ClientGoneError
from ddgan.server.errors import APIError
from ddgan.server.png_cache import CacheUse
from ddgan.server.schemas import ErrorResponse, GenerateRequest, GenerateResponse
from ddgan.server.serving import CLIENT_CLOSED

router = APIRouter(tags=["generate"])


async def require_json_body(request: Request) -> None:
    """The body must say it is JSON: a body without a content type is not guessed at (415, like a form body)."""
    content_type = request.headers.get("content-type")
    if content_type is None or content_type.split(";")[0].strip().lower() != "application/json":
        sent = repr(content_type) if content_type else "no Content-Type"
        raise APIError(415, "unsupported_media_type", f"send the request as application/json, not {sent}")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 406, 413, 415, 422, 500, 503, 504)
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "content": {PNG: {}, ZIP: {}},
        "description": "JSON with base64 PNGs (default), one grid PNG (Accept: image/png) or a ZIP of PNGs "
        "(Accept: application/zip). Headers: X-Request-ID, Server-Timing, X-Seed, X-Image-Count, X-Cached-Images, "
        "X-Weights, X-Dtype, X-Priority. Images of seeds seen before come from the PNG cache; "
        "`Cache-Control: no-cache` regenerates them.",
    },
}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=_RESPONSES,
    dependencies=[ApiKey, Depends(require_json_body)],
    summary="Generate n images of a dataset from a seed",
)
async def generate(body: GenerateRequest, request: Request, service: ServiceDep) -> Response:
    media_type = negotiate(request.headers.get("accept"))  # a 406 is counted like every rejection before this
    request.state.metrics_recorded = True  # from here on the serving layer records the request
    try:
        rendered = await service.generate(
            body, media_type, str(request.state.request_id), client_gone(request),
            CacheUse.of(request.headers.get("cache-control")),
            key_priority=getattr(request.state, "key_priority", None),
        )  # fmt: skip
    except ClientGoneError:
        return Response(status_code=CLIENT_CLOSED)
    request.state.server_timing = rendered.server_timing
    if isinstance(rendered.content, dict):
        return JSONResponse(rendered.content, headers=rendered.headers)
    return Response(rendered.content, media_type=rendered.media_type, headers=rendered.headers)


def client_gone(request: Request) -> Any:
    async def watch() -> None:
        """Returns when the client disconnects (the body is already read, so the next message is the disconnect)."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return watch
