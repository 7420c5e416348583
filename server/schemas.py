"""Request and response bodies of the HTTP API (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from ddgan.model.noise import MAX_SEED


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" includes 2.0: accept what the schema accepts (strings and booleans stay errors).
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds go before the validator, so that they land in the JSON schema (as minimum / maximum).
Images = Annotated[int, Strict(), Field(ge=1), BeforeValidator(_integral)]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)]
Steps = Annotated[int, Strict(), Field(ge=1, le=1000), BeforeValidator(_integral)]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset": "mnist", "n": 16, "seed": 7}]},
    )

    dataset: str = Field(min_length=1, max_length=64, description="a dataset listed by GET /v1/models")
    n: Images = Field(default=1, description="number of images (1 .. the server's max_images_per_request)")
    seed: Seed | None = Field(None, description="image i uses seed + i; absent: a random seed, returned")
    sampler: Literal["ddgan", "ddpm"] = Field(default="ddgan", description="'ddpm': the dataset's DDPM baseline")
    steps: Steps | None = Field(
        default=None, description="DDPM denoising steps (ddpm only; a DDGAN accepts only its own T)"
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        strict=True,  # a JSON number: not "1", not true
        allow_inf_nan=False,  # not the Infinity / NaN literals Python's JSON parser lets through
        description="deadline in seconds (a finite number > 0); capped by the server's request_timeout_s",
    )
    priority: Literal["interactive", "batch"] | None = Field(
        default=None,
        description="'interactive' (default) is batched first; 'batch' waits for interactive work, at most the "
        "model's aging_ms before it ranks like interactive work. An API key mapped to 'batch' always runs as batch",
    )


class LatencyMs(BaseModel):
    queue: float = Field(description="waiting for the first batch")
    inference: float = Field(description="sampler time of the batches that held this request's images")
    png_encode: float
    total: float


class GenerateResponse(BaseModel):
    request_id: str
    model: str = Field(description="the dataset name")
    sampler: Literal["ddgan", "ddpm"]
    steps: int
    seed: int
    seeds: list[int]
    width: int
    height: int
    channels: int
    backend: str
    device: str
    dtype: str = Field(description="the dtype the network computed in (a registry `auto` resolved)")
    random_weights: bool = Field(description="true: untrained weights, for latency work only")
    cached: int = Field(description="images answered from the PNG cache (no sampler time)")
    images: list[str] = Field(description="base64-encoded PNGs, one per seed")
    latency_ms: LatencyMs


class ModelInfo(BaseModel):
    dataset: str
    sampler: Literal["ddgan", "ddpm"]
    state: Literal["loading", "warming", "ready", "not_installed", "failed"]
    ready: bool
    reason: str | None = Field(description="why the model is not ready")
    install: str | None = Field(description="the command that installs missing weights")
    steps: int | None = Field(description="DDGAN: its T; DDPM: default inference steps")
    max_steps: int | None = Field(description="DDPM: largest `steps` accepted")
    resolution: int | None
    channels: int | None
    backend: str
    device: str
    dtype: str
    weights: Literal["real", "random"] | None
    max_batch_images: int
    micro_batch: int | None = Field(
        description="rows of every forward pass (batch-invariant models; null: each batch runs whole)"
    )
    remainder_sizes: list[int] = Field(
        default_factory=list,
        description="smaller forward-pass sizes verified at warm-up to give the micro_batch's bits: a batch's last "
        "pass is padded only up to the smallest of these that holds it",
    )
    micro_batch_choice: str | None = Field(description="how micro_batch was chosen: measured at warm-up, registry")
    warmup_ms_per_image: dict[str, float] | None = Field(description="warm-up: batch size -> ms per image")
    max_wait_ms: float
    max_queue_images: int
    queued_images: int
    max_queue_work: int | None = Field(description="image-steps (images x steps) the queue holds before a 503")
    queued_work: float | None = Field(description="image-steps waiting for a batch (None: not reported)")
    workers: list[str] = Field(description="the device of each worker pulling from this model's queue")


class ModelList(BaseModel):
    max_images_per_request: int
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    type: str = Field(description="machine-readable kind, e.g. invalid_request, unknown_model, overloaded")
    message: str
    status: int
    request_id: str | None
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]
    uptime_s: float


class ModelReadiness(BaseModel):
    model: str = Field(description="dataset/sampler")
    dataset: str
    sampler: Literal["ddgan", "ddpm"]
    state: Literal["loading", "warming", "ready", "not_installed", "failed"]
    reason: str | None = Field(description="why the model is not ready (never a filesystem path)")


class Readiness(BaseModel):
    ready: bool
    mode: Literal["available", "strict"] = Field(
        description="available: ready once every model that can load has; strict: 503 while any failed"
    )
    failed: list[ModelReadiness] = Field(description="models that could not load or warm up")
    models: list[ModelReadiness]
