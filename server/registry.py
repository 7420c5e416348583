"""The model registry: a TOML file listing every served (dataset, sampler) model and its batching limits.

```toml
[[models]]
dataset = "mnist"          # the name clients send; looked up here, never used as a path
sampler = "ddgan"          # or "ddpm" (the baseline of the same dataset)
path = "mnist"             # model directory, relative to this file
backend = "torch"          # ddgan: torch, cuda-graphs, torch-compile, onnxruntime, tensorrt
backend_options = {}       # the backend's options, e.g. { compile_mode = "max-autotune" } for torch-compile
device = "auto"            # auto (cuda if present), cpu, cuda, cuda:1 ...
dtype = "float32"          # float16, bfloat16, auto (bf16 on bf16 GPUs and AMX CPUs, else float32)
max_batch_images = 16      # images per batch
max_wait_ms = 5            # how long a batch may wait to fill up
max_queue_images = 256     # images waiting beyond this answer 503 (memory)
max_queue_work = 4096      # image-steps (images x steps) waiting beyond this answer 503 (time)
aging_ms = 2000            # a `batch`-priority request waiting this long is served like an interactive one
batch_invariant = true     # fixed-size forward passes (only the last is padded): bit-identical images in any batch
micro_batch = 4            # batch_invariant: that fixed size (default: measured at warm-up, see server/warmup.py)
workers = 1                # worker threads pulling from this model's queue, each with its own sampler
devices = ["cuda:0", "cuda:1"]  # instead of device/workers: one worker per device
threads = 2                # intra-op threads of this model, split among its workers (default: torch's)
nice = 10                  # run its workers at this lower OS priority (Linux: 0..19; the baseline's isolation)
scaling = { min_replicas = 1, max_replicas = 4 }   # `ddgan serve --engine ray` only (ReplicaScaling)
```
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SamplerKind = Literal["ddgan", "ddpm"]
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


class RegistryError(ValueError):
    """The registry file is missing, is not TOML, or a field is invalid (the message names it)."""


class ReplicaScaling(BaseModel):
    """How the Ray engine runs a model: its replicas, their resources and autoscaling (the native server ignores it).

    Ray Serve scales between `min_replicas` and `max_replicas` to keep about `target_ongoing_requests` requests
    on each replica; a replica takes up to `max_ongoing_requests` at once (its batch queue coalesces them), and
    up to `max_queued_requests` more wait for a free replica before the ingress answers 503 + Retry-After.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=1, ge=1, le=1024, description="replicas kept warm even when idle")
    max_replicas: int = Field(default=1, ge=1, le=1024)
    initial_replicas: int | None = Field(default=None, ge=1, le=1024, description="default: min_replicas")
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="requests per replica Serve aims for")
    max_ongoing_requests: int = Field(default=8, ge=1, le=10_000, description="requests one replica takes at once")
    max_queued_requests: int = Field(default=64, ge=0, le=1_000_000, description="waiting for a replica: then 503")
    upscale_delay_s: float = Field(default=30.0, ge=0, description="load above target this long adds replicas")
    downscale_delay_s: float = Field(default=600.0, ge=0, description="load below target this long removes them")
    look_back_period_s: float = Field(default=30.0, gt=0, description="window the ongoing requests are averaged over")
    num_cpus: float = Field(default=1.0, gt=0, le=512, description="CPUs per replica, also its torch threads")
    num_gpus: float | None = Field(
        default=None, ge=0, le=16, description="GPUs per replica; default 1 on cuda devices (auto: if the cluster has)"
    )

    @model_validator(mode="after")
    def _bounds(self) -> ReplicaScaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas ({initial}) is outside min_replicas..max_replicas")
        return self


class ModelEntry(BaseModel):
    """One served model; `path` is absolute once loaded through `load_registry`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="name used in requests")
    sampler: SamplerKind = "ddgan"
    path: Path
    preset: str | None = Field(
        default=None,
        description="architecture --random-weights builds when the weights are absent: a DDGAN preset (ddgan) "
        "or a model.ddpm UNET_ARCHITECTURES name (ddpm); default: the dataset name",
    )
    backend: str = "torch"
    backend_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="the backend's options, e.g. compile_mode for torch-compile"
    )
    device: str = Field(default="auto", pattern=DEVICE.pattern)
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        default="float32", description="auto: bfloat16 on bf16 GPUs and AMX CPUs, else float32 (model/dtypes.py)"
    )
    max_batch_images: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=5.0, ge=0, le=10_000)
    max_queue_images: int = Field(default=256, ge=1, le=1_000_000)
    max_queue_work: int | None = Field(
        default=None,
        ge=1,
        description="image-steps (images x steps) the queue holds; default max_queue_images x the most steps",
    )
    aging_ms: float = Field(
        default=2000.0,
        ge=0,
        le=3_600_000,
        description="a batch-priority request waiting this long ranks as interactive",
    )
    workers: int = Field(default=1, ge=1, le=64, description="worker threads on `device`, each with its own sampler")
    devices: tuple[str, ...] | None = Field(
        default=None, min_length=1, max_length=64, description="one worker per device (instead of device/workers)"
    )
    threads: int | None = Field(
        default=None, ge=1, le=512, description="intra-op threads of this model, split among its workers"
    )
    nice: int = Field(default=0, ge=0, le=19, description="lower the OS priority of its workers by this much (Linux)")
    default_steps: int | None = Field(
        default=None, ge=1, le=1000, description="DDPM inference steps when a request omits it"
    )
    max_steps: int = Field(default=1000, ge=1, le=1000, description="largest DDPM `steps` a request may ask for")
    batch_invariant: bool = Field(
        default=True,
        description="run a batch as forward passes of exactly `micro_batch` rows (padding only the last), so an "
        "image is bit-identical alone or in any batch; CPU/GPU kernels pick algorithms by batch shape otherwise",
    )
    micro_batch: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="batch_invariant: the rows of every forward pass; default: measured at warm-up (the smallest "
        "of warmup_batch_sizes within 10% of the best images/s), max_batch_images when warm-up is off",
    )
    warmup_batch_sizes: tuple[int, ...] | None = Field(
        default=None,
        description="the batch sizes warm-up runs (the micro-batch candidates when it measures one); default: "
        "1, 2, 4 ... and max_batch_images when measuring (1, 2, 4 ... and micro_batch when that is given: the "
        "remainder candidates), else 1 and max_batch_images",
    )
    install: str | None = Field(default=None, description="command that installs the weights (shown in the 404)")
    scaling: ReplicaScaling = Field(default_factory=ReplicaScaling, description="the Ray engine's replicas")

    @model_validator(mode="after")
    def _consistent(self) -> ModelEntry:
        if self.sampler == "ddgan" and self.default_steps is not None:
            raise ValueError("default_steps applies to sampler 'ddpm' only (a DDGAN's steps are its trained T)")
        if self.sampler == "ddpm" and (self.backend != "torch" or self.backend_options):
            raise ValueError("backend: the ddpm baseline runs on plain 'torch' only (no backend_options)")
        if self.default_steps is not None and self.default_steps > self.max_steps:
            raise ValueError(f"default_steps ({self.default_steps}) exceeds max_steps ({self.max_steps})")
        if self.max_queue_images < self.max_batch_images:
            raise ValueError("max_queue_images must be >= max_batch_images")
        for device in self.devices or ():
            if not DEVICE.fullmatch(device) or device == "auto":
                raise ValueError(f"devices: {device!r} is not cpu, cuda, cuda:N or mps")
        if self.devices is not None and self.workers != 1:
            raise ValueError("give devices (one worker each) or workers, not both")
        if self.micro_batch is not None and not self.batch_invariant:
            raise ValueError("micro_batch applies to batch_invariant = true only")
        if self.micro_batch is not None and self.micro_batch > self.max_batch_images:
            raise ValueError(f"micro_batch ({self.micro_batch}) exceeds max_batch_images ({self.max_batch_images})")
        for size in self.warmup_batch_sizes or ():
            if not 1 <= size <= self.max_batch_images:
                raise ValueError(f"warmup_batch_sizes: {size} is outside 1..max_batch_images")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.sampler)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.sampler}"

    @property
    def worker_devices(self) -> tuple[str, ...]:
        """The device of each worker (before `DDGAN_DEVICE` overrides them)."""
        return self.devices or (self.device,) * self.workers

    @property
    def measures_micro_batch(self) -> bool:
        """Batch-invariant without a registry `micro_batch`: warm-up measures which fixed size to run."""
        return self.batch_invariant and self.micro_batch is None

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes warm-up runs (when it measures the micro-batch: the candidates, ascending)."""
        if self.warmup_batch_sizes:
            return tuple(sorted(set(self.warmup_batch_sizes)))
        if self.batch_invariant:  # candidates, or a pinned micro_batch and its smaller remainder candidates
            largest = self.micro_batch or self.max_batch_images
            powers = [2**k for k in range(largest.bit_length()) if 2**k < largest]
            return (*powers, largest)
        return tuple(sorted({1, self.max_batch_images}))

    def install_hint(self) -> str:
        if self.install:
            return self.install
        # The directory relative to the registry: clients see this hint, the host's absolute paths are not theirs.
        target = f"<registry folder>/{self.path.name}"
        if self.sampler == "ddpm":
            return f"ddgan train-ddpm --dataset {self.dataset} -o {target}"
        return f"ddgan convert <official netG_*.pth> --preset {self.preset or self.dataset} -o {target}"


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Registry:
        seen: set[tuple[str, str]] = set()
        for entry in self.models:
            if entry.key in seen:
                raise ValueError(f"{entry.name} is listed twice")
            seen.add(entry.key)
        return self

    def get(self, dataset: str, sampler: str) -> ModelEntry | None:
        return next((m for m in self.models if m.key == (dataset, sampler)), None)

    def only(self, names: list[str]) -> Registry:
        """The entries named `dataset` (both samplers) or `dataset/sampler`; an unknown name is a RegistryError."""
        known = {m.name for m in self.models} | {m.dataset for m in self.models}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise RegistryError(f"models {', '.join(unknown)} not in the registry; it has {', '.join(sorted(known))}")
        return Registry(models=[m for m in self.models if m.name in names or m.dataset in names])


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"{field}: {item['msg']}")
    return f"{source}: invalid registry\n  " + "\n  ".join(lines)


def parse_registry(data: dict, base_dir: Path, source: str = "<registry>") -> Registry:
    """Validate registry data; relative model paths are resolved against `base_dir`."""
    try:
        registry = Registry.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(_describe(exc, source)) from None
    resolved = [m.model_copy(update={"path": (base_dir / m.path).resolve()}) for m in registry.models]
    return Registry(models=resolved)


def load_registry(path: str | Path) -> Registry:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"registry file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
    return parse_registry(data, path.resolve().parent, str(path))
