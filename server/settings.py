"""Process-wide server settings: pydantic-settings, environment prefix `DDGAN_`, built in `create_app`.

Per-model settings (batch limits, backend, device) live in the registry file; these are the knobs that apply
to the whole process. Every field can be set as `DDGAN_<FIELD>` (e.g. `DDGAN_API_KEY`, `DDGAN_REGISTRY`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ddgan.model.threads import available_cpus

# The registry shipped with the repository (and copied into the docker image beside the bundled models).
DEFAULT_REGISTRY = Path(__file__).resolve().parents[1] / "models" / "registry.toml"


def _default_png_workers() -> int:
    return max(1, min(4, available_cpus()))


class ServerSettings(BaseSettings):
    """Settings of one server process; validation errors name the field (`DDGAN_<FIELD>`)."""

    model_config = SettingsConfigDict(env_prefix="DDGAN_", extra="ignore")

    registry: Path = Field(default=DEFAULT_REGISTRY, description="model registry TOML file")
    host: str = Field(default="127.0.0.1", description="interface uvicorn binds to")
    port: int = Field(default=8000, ge=0, le=65535)
    models: str | None = Field(
        default=None,
        description="serve only these registry models: a comma list of `dataset` or `dataset/sampler` "
        "(default: all); loading and warming fewer models makes the server ready sooner",
    )
    random_weights: bool = Field(
        default=False, description="serve every DDGAN/DDPM architecture with random weights (latency work only)"
    )
    device: str | None = Field(default=None, description="override every model's device (cpu, cuda, cuda:1, auto)")
    backend: str | None = Field(default=None, description="override every DDGAN model's backend")
    api_key: SecretStr | None = Field(default=None, description="if set, /generate and /v1/models need `Bearer <key>`")
    key_priorities: dict[str, Literal["interactive", "batch"]] = Field(
        default_factory=dict,
        repr=False,
        description="more API keys, each mapped to the highest priority its requests run at (JSON object, e.g. "
        '{"<key>": "batch"}); any entry turns authentication on',
    )
    admin_key: SecretStr | None = Field(
        default=None, description="enables POST /admin/reload for `Bearer <key>` (a key of its own, not api_key)"
    )
    max_body_bytes: int = Field(default=16 * 1024, ge=256, description="largest accepted request body")
    max_json_depth: int = Field(
        default=32, ge=2, le=512, description="deepest nesting of a JSON body (400 bad_json beyond, before parsing)"
    )
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, description="largest request line + headers (431 beyond)"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="time a request's headers may take to arrive (408)"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="longest pause while a request body arrives (408)"
    )
    keep_alive_timeout_s: int = Field(default=5, ge=1, le=3600, description="idle keep-alive connections close")
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="concurrent connections + requests; 503 overloaded beyond (health probes still answered)",
    )
    max_images_per_request: int = Field(default=64, ge=1, le=4096, description="upper bound of `n`")
    request_timeout_s: float = Field(default=120.0, gt=0, description="deadline of a /generate request (504 past it)")
    png_workers: int = Field(default_factory=_default_png_workers, ge=1, le=64)
    png_compress_level: int = Field(default=1, ge=0, le=9, description="zlib level of the PNGs (1: fast)")
    png_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="byte budget of the in-process LRU of encoded PNGs shared by /generate and /v1/images (0: off)",
    )
    warmup: bool = Field(default=True, description="run every model at its batch sizes before /readyz turns ready")
    readiness: Literal["available", "strict"] = Field(
        default="available",
        description="/readyz: 'available' is ready once every model that can load has (failed ones are listed); "
        "'strict' stays 503 while any model failed",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        ge=0,
        allow_inf_nan=False,
        description="on SIGTERM, how long queued work may finish; then 503 shutting_down (0: at once)",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="torch intra-op threads (default: OMP_NUM_THREADS, else the CPUs of the affinity mask and cgroup "
        "quota: more threads than CPUs preempt each other, see ddgan.model.threads)",
    )
    log_level: str = Field(default="info", description="uvicorn and server log level")
    jobs_max: int = Field(default=64, ge=1, le=100_000, description="async jobs held at once (any state)")
    jobs_ttl_s: float = Field(default=600.0, gt=0, description="how long a finished job and its result are kept")
    jobs_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="raw image bytes of finished job results kept at once"
    )
    jobs_timeout_s: float = Field(default=3600.0, gt=0, description="deadline of one async job, queueing included")

    @property
    def model_names(self) -> list[str] | None:
        return [name.strip() for name in self.models.split(",") if name.strip()] if self.models else None

    @field_validator("device", "backend")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("key_priorities")
    @classmethod
    def _no_blank_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not key.strip() for key in value):
            raise ValueError("an API key in DDGAN_KEY_PRIORITIES is empty")
        return value

    @field_validator("api_key")
    @classmethod
    def _real_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would turn auth on and accept `Authorization: Bearer ` (nothing): refuse to start.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("DDGAN_API_KEY is set but empty or whitespace: set a real key, or unset it for no auth")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError("log_level must be one of critical, error, warning, info, debug, trace")
        return value
