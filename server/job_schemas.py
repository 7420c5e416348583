"""Response bodies of the async jobs API (`/v1/jobs`) and of the admin reload (also the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobProgress(BaseModel):
    images_done: int
    images_total: int
    steps_done: int = Field(description="denoising steps done over all the job's images (DDPM: one per step)")
    steps_total: int = Field(description="images_total x the steps each image runs")
    fraction: float = Field(description="steps_done / steps_total, 0 .. 1")


class JobError(BaseModel):
    type: str = Field(description="as in the error shape, e.g. generation_failed, deadline_exceeded")
    message: str
    status: int = Field(description="the HTTP status /generate would have answered")


class JobTimings(BaseModel):
    created_at: float = Field(description="Unix time the job was accepted")
    started_at: float | None = Field(description="its first batch started")
    finished_at: float | None = Field(description="it reached a terminal state")
    expires_at: float | None = Field(description="after this the job and its result answer 404")
    queue_ms: float | None = Field(description="accepted -> first batch (succeeded jobs)")
    inference_ms: float | None = Field(description="sampler time of the batches holding its images")


class JobStatus(BaseModel):
    id: str
    state: JobStateName
    model: str = Field(description="the dataset name")
    sampler: Literal["ddgan", "ddpm"]
    n: int
    seed: int
    steps: int
    progress: JobProgress
    timings: JobTimings
    error: JobError | None = Field(description="why a failed job failed")
    result_url: str | None = Field(description="GET it for the images (succeeded jobs)")


class ReloadPlan(BaseModel):
    generation: int = Field(description="reloads applied since start (this one included)")
    added: list[str] = Field(description="models loading now; they appear in /v1/models when loaded")
    removed: list[str] = Field(description="models no longer accepting work; queued work finishes, then they close")
    changed: list[str] = Field(description="models reloading; the old one serves until the new one is warm")
    unchanged: list[str]
