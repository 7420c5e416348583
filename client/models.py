"""What the client returns: generations, jobs, content-addressed images and models, as typed dataclasses.

Each is built from the server's JSON (`from_json`), keeping unknown fields out, so a newer server that adds
fields does not break an older client.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Latency:
    """Milliseconds spent waiting for a batch, in the sampler, encoding PNGs, and in all."""

    queue: float
    inference: float
    png_encode: float
    total: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Latency:
        return cls(*(float(data.get(name, 0.0)) for name in ("queue", "inference", "png_encode", "total")))


@dataclass(frozen=True)
class Generation:
    """The answer of `/generate` (or of a job's result): one PNG per seed, in seed order."""

    request_id: str
    dataset: str
    sampler: str
    steps: int
    seed: int
    seeds: list[int]
    images: list[bytes] = field(repr=False)
    width: int
    height: int
    channels: int
    backend: str
    device: str
    random_weights: bool
    cached: int  # images the server answered from its PNG cache
    latency: Latency

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generation:
        return cls(
            request_id=str(data.get("request_id", "")),
            dataset=data["model"],
            sampler=data["sampler"],
            steps=int(data["steps"]),
            seed=int(data["seed"]),
            seeds=[int(s) for s in data["seeds"]],
            images=[base64.b64decode(image) for image in data["images"]],
            width=int(data["width"]),
            height=int(data["height"]),
            channels=int(data["channels"]),
            backend=str(data.get("backend", "")),
            device=str(data.get("device", "")),
            random_weights=bool(data.get("random_weights", False)),
            cached=int(data.get("cached", 0)),
            latency=Latency.from_json(data.get("latency_ms", {})),
        )

    def filenames(self) -> list[str]:
        return [f"{self.dataset}-{self.sampler}-seed{seed}.png" for seed in self.seeds]

    def save(self, directory: str | Path) -> list[Path]:
        """Write one PNG per seed as `<dataset>-<sampler>-seed<seed>.png`; returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / name for name in self.filenames()]
        for path, png in zip(paths, self.images, strict=True):
            path.write_bytes(png)
        return paths


@dataclass(frozen=True)
class Image:
    """One content-addressed PNG (`/v1/images/...`): `etag` names its bytes forever."""

    png: bytes = field(repr=False)
    etag: str
    seed: int
    steps: int
    cache: str  # "hit" or "miss": whether the server had it encoded already


@dataclass(frozen=True)
class JobProgress:
    images_done: int
    images_total: int
    steps_done: int
    steps_total: int
    fraction: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobProgress:
        images_total = int(data.get("images_total", 0))
        steps_total = int(data.get("steps_total", 0))
        steps_done = int(data.get("steps_done", 0))
        fraction = data.get("fraction")
        if fraction is None:
            fraction = steps_done / steps_total if steps_total else 0.0
        return cls(int(data.get("images_done", 0)), images_total, steps_done, steps_total, float(fraction))


@dataclass(frozen=True)
class Job:
    """An async job's state (`/v1/jobs/{id}`); `error` is the failure's `{"type", "message", "status"}`."""

    id: str
    state: str
    dataset: str
    sampler: str
    n: int
    seed: int | None
    steps: int | None
    progress: JobProgress
    timings: dict[str, Any]
    error: dict[str, Any] | None
    result_url: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=str(data["id"]),
            state=str(data["state"]),
            dataset=str(data.get("model", "")),
            sampler=str(data.get("sampler", "")),
            n=int(data.get("n", 0)),
            seed=data.get("seed"),
            steps=data.get("steps"),
            progress=JobProgress.from_json(data.get("progress") or {}),
            timings=dict(data.get("timings") or {}),
            error=data.get("error"),
            result_url=data.get("result_url"),
        )


@dataclass(frozen=True)
class Model:
    """One entry of `/v1/models`."""

    dataset: str
    sampler: str
    state: str
    ready: bool
    reason: str | None
    steps: int | None
    max_steps: int | None
    resolution: int | None
    channels: int | None
    backend: str
    device: str
    dtype: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(
            dataset=data["dataset"],
            sampler=data["sampler"],
            state=data["state"],
            ready=bool(data["ready"]),
            reason=data.get("reason"),
            steps=data.get("steps"),
            max_steps=data.get("max_steps"),
            resolution=data.get("resolution"),
            channels=data.get("channels"),
            backend=str(data.get("backend", "")),
            device=str(data.get("device", "")),
            dtype=str(data.get("dtype", "")),
        )
