"""GET /v1/models: every configured model, whether it serves, and if not why."""

from __future__ import annotations

from fastapi import APIRouter

from ddgan.server.dependencies import ApiKey, EngineDep, SettingsDep
from ddgan.server.engine import ModelHandle, ModelState
from ddgan.server.schemas import ErrorResponse, ModelInfo, ModelList

router = APIRouter(tags=["models"])


def describe(served: ModelHandle, settings_device: str | None) -> ModelInfo:
    entry, info = served.entry, served.info
    shape = info.image_shape if info else None
    return ModelInfo(
        dataset=entry.dataset,
        sampler=entry.sampler,
        state=served.state.value,
        ready=served.state is ModelState.READY,
        reason=served.reason,
        install=entry.install_hint() if served.state is ModelState.NOT_INSTALLED else None,
        steps=info.default_steps if info else entry.default_steps,
        max_steps=(None if info.fixed_steps else info.max_steps) if info else None,
        resolution=shape[1] if shape else None,
        channels=shape[0] if shape else None,
        backend=info.backend if info else entry.backend,
        device=info.device if info else settings_device or entry.device,
        dtype=info.dtype if info else entry.dtype,
        weights=("random" if info.random_weights else "real") if info else None,
        max_batch_images=entry.max_batch_images,
        micro_batch=info.micro_batch if info else entry.micro_batch,
        remainder_sizes=list(info.remainder_sizes) if info else [],
        micro_batch_choice=served.micro_batch_choice,
        warmup_ms_per_image={str(size): round(s * 1000 / size, 3) for size, s in served.warmup.items()} or None,
        max_wait_ms=entry.max_wait_ms,
        max_queue_images=entry.max_queue_images,
        queued_images=served.queued_units,
        max_queue_work=served.max_queue_work,
        queued_work=served.queued_work,
        workers=served.workers,
    )


@router.get(
    "/v1/models",
    response_model=ModelList,
    dependencies=[ApiKey],
    responses={401: {"model": ErrorResponse}},
    summary="Configured models and their state",
)
async def list_models(engine: EngineDep, settings: SettingsDep) -> ModelList:
    return ModelList(
        max_images_per_request=settings.max_images_per_request,
        models=[describe(m, settings.device) for m in engine.handles()],
    )
