"""GET /v1/models: every configured model, whether it serves, and if not why."""

from __future__ import annotations

from fastapi import APIRouter

from ddgan.server.dependencies import ApiKey, RuntimeDep, SettingsDep
from ddgan.server.runtime import ModelState, ServedModel
from ddgan.server.schemas import ErrorResponse, ModelInfo, ModelList

router = APIRouter(tags=["models"])


def describe(served: ServedModel, settings_device: str | None, settings_backend: str | None) -> ModelInfo:
    entry, loaded, shape = served.entry, served.loaded, served.image_shape
    return ModelInfo(
        dataset=entry.dataset,
        sampler=entry.sampler,
        state=served.state.value,
        ready=served.state is ModelState.READY,
        reason=served.reason,
        install=entry.install_hint() if served.state is ModelState.NOT_INSTALLED else None,
        steps=served.default_steps,
        max_steps=served.max_steps if entry.sampler == "ddpm" else None,
        resolution=shape[1] if shape else None,
        channels=shape[0] if shape else None,
        backend=loaded.backend if loaded else (settings_backend if entry.sampler == "ddgan" else None) or entry.backend,
        device=loaded.device if loaded else settings_device or entry.device,
        dtype=entry.dtype,
        weights=("random" if loaded.random_weights else "real") if loaded else None,
        max_batch_images=entry.max_batch_images,
        max_wait_ms=entry.max_wait_ms,
        max_queue_images=entry.max_queue_images,
        queued_images=served.queue.queued_images if served.queue else 0,
    )


@router.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[ApiKey],
    responses={401: {"model": ErrorResponse}},
    summary="Configured models and their state",
)
async def list_models(runtime: RuntimeDep, settings: SettingsDep) -> ModelList:
    return ModelList(
        max_images_per_request=settings.max_images_per_request,
        models=[describe(m, settings.device, settings.backend) for m in runtime.models.values()],
    )
