"""GET /v1/images/{dataset}/{sampler}/{seed}.png: one content-addressed image, cacheable forever (ETag, 304)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from ddgan.model.noise import MAX_SEED
from ddgan.server.dependencies import ApiKey, ServiceDep
from ddgan.server.encoding import PNG
from ddgan.server.engine import ClientGoneError
from ddgan.server.png_cache import CacheUse
from ddgan.server.routes.generate import client_gone
from ddgan.server.schemas import ErrorResponse
from ddgan.server.serving import CLIENT_CLOSED

router = APIRouter(tags=["images"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{code: {"model": ErrorResponse} for code in (401, 404, 422, 500, 503, 504)},
    200: {
        "content": {PNG: {}},
        "description": "The PNG. Headers: ETag (strong when the model is batch-invariant), "
        "Cache-Control: public, max-age=31536000, immutable, X-Cache (hit/miss), X-Seed, X-Steps, X-Weights.",
    },
    304: {"description": "If-None-Match matched the ETag: the client's copy is this image"},
}


@router.get(
    "/v1/images/{dataset}/{sampler}/{seed}.png",
    response_class=Response,
    responses=_RESPONSES,
    dependencies=[ApiKey],
    summary="One image by its seed: a pure function of the weights, backend, dtype, device type, seed and steps",
)
async def image(
    request: Request,
    service: ServiceDep,
    dataset: Annotated[str, Path(min_length=1, max_length=64)],
    sampler: Literal["ddgan", "ddpm"],
    seed: Annotated[int, Path(ge=0, le=MAX_SEED)],
    steps: Annotated[int | None, Query(ge=1, le=1000, description="DDPM denoising steps (ddpm only)")] = None,
) -> Response:
    try:
        answer = await service.image(
            dataset, sampler, seed, steps, request.headers.get("if-none-match"), client_gone(request),
            CacheUse.of(request.headers.get("cache-control")),
        )  # fmt: skip
    except ClientGoneError:
        return Response(status_code=CLIENT_CLOSED)
    request.state.server_timing = answer.server_timing
    if answer.png is None:
        return Response(status_code=answer.status, headers=answer.headers)
    return Response(answer.png, media_type=PNG, headers=answer.headers)
