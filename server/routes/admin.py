"""POST /admin/reload: re-read the model registry (server/reload.py), behind its own key `DDGAN_ADMIN_KEY`."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request

from ddgan.server.dependencies import SettingsDep
from ddgan.server.errors import APIError
from ddgan.server.job_schemas import ReloadPlan
from ddgan.server.registry import RegistryError
from ddgan.server.reload import RegistryReloader, ReloadBusyError
from ddgan.server.schemas import ErrorResponse

router = APIRouter(tags=["operations"])


async def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """The admin API exists only with `DDGAN_ADMIN_KEY` set; callers send `Authorization: Bearer <admin key>`."""
    if settings.admin_key is None:
        raise APIError(404, "not_found", "the admin API is disabled (set DDGAN_ADMIN_KEY to enable it)")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.admin_key.get_secret_value()
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(
            401, "unauthorized", "missing or wrong admin key (Authorization: Bearer <DDGAN_ADMIN_KEY>)",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip


@router.post(
    "/admin/reload",
    status_code=202,
    response_model=ReloadPlan,
    dependencies=[Depends(require_admin_key)],
    responses={code: {"model": ErrorResponse} for code in (401, 404, 409, 422, 501)},
    summary="Re-read the registry: load added models, drain removed ones, swap changed ones once warm",
)
async def reload_registry(request: Request) -> ReloadPlan:
    reloader: RegistryReloader | None = request.app.state.reloader
    if reloader is None:
        raise APIError(501, "not_supported", "this engine does not reload in place: redeploy its Serve application")
    try:
        return await reloader.reload()
    except RegistryError as exc:
        raise APIError(
            422, "invalid_registry", f"registry refused, the served models stay as they are: {exc}"
        ) from None
    except ReloadBusyError as exc:
        raise APIError(409, "reload_in_progress", str(exc)) from None
