"""Request and response bodies of the HTTP API (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ddgan.model.noise import MAX_SEED


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"dataset": "mnist", "n": 16, "seed": 7}]},
    )

    dataset: str = Field(min_length=1, max_length=64, description="a dataset listed by GET /v1/models")
    n: StrictInt = Field(default=1, ge=1, description="number of images (1 .. the server's max_images_per_request)")
    seed: StrictInt | None = Field(
        None, ge=0, le=MAX_SEED, description="image i uses seed + i; absent: a random seed, returned"
    )
    sampler: Literal["ddgan", "ddpm"] = Field(default="ddgan", description="'ddpm': the dataset's DDPM baseline")
    steps: StrictInt | None = Field(default=None, ge=1, le=1000, description="DDPM denoising steps (ddpm only)")
    timeout_s: float | None = Field(
        default=None, gt=0, description="deadline; capped by the server's request_timeout_s"
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
    micro_batch_choice: str | None = Field(description="how micro_batch was chosen: measured at warm-up, registry")
    warmup_ms_per_image: dict[str, float] | None = Field(description="warm-up: batch size -> ms per image")
    max_wait_ms: float
    max_queue_images: int
    queued_images: int


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
    model: str
    state: str
    reason: str | None


class Readiness(BaseModel):
    ready: bool
    models: list[ModelReadiness]
