"""Shared fixtures: tiny DDGAN and DDPM model directories, a registry over them, and an in-process app."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI

from ddgan.model.checkpoint import save_model
from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
from ddgan.model.sampler import Sampler, random_generator
from ddgan.server.app import create_app
from ddgan.server.loader import load_entry
from ddgan.server.registry import ModelEntry, load_registry
from ddgan.server.settings import ServerSettings

TINY_DDGAN = ModelConfig(
    preset="tiny",
    generator=GeneratorConfig(
        num_channels=1,
        num_channels_dae=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        image_size=16,
        nz=8,
        z_emb_dim=16,
        n_mlp=1,
    ),
    diffusion=DiffusionConfig(num_timesteps=2),
    dataset="mnist",
)
# One intra-op thread: the machine is shared and OpenMP spinning under oversubscription slows tiny models 100x.
torch.set_num_threads(1)

DDPM_TRAIN_STEPS = 50
DDPM_DEFAULT_STEPS = 4
GATED_SEEDS = 1000


def build_tiny_models(root: Path) -> Path:
    """A DDGAN (16x16x1, T=2) and a DDPM (16x16x1) in our/diffusers formats, and a registry over them."""
    from diffusers import DDPMScheduler

    from ddgan.model.ddpm_io import build_unet, save_ddpm

    save_model(root / "tiny-ddgan", TINY_DDGAN, random_generator(TINY_DDGAN, seed=3).state_dict())
    unet = build_unet("tiny", num_channels=1, seed=4)
    scheduler = DDPMScheduler(num_train_timesteps=DDPM_TRAIN_STEPS, beta_schedule="linear", clip_sample=True)
    save_ddpm(root / "tiny-ddpm", unet, scheduler, dataset="mnist", default_steps=DDPM_DEFAULT_STEPS)
    return root


def write_registry(root: Path, **overrides: Any) -> Path:
    """mnist ddgan + ddpm over the tiny models, and a celebahq entry whose weights are absent."""
    ddgan = {"max_batch_images": 8, "max_wait_ms": 20, "max_queue_images": 64, **overrides.get("ddgan", {})}
    ddpm = {"max_batch_images": 4, "max_wait_ms": 5, "max_queue_images": 32, **overrides.get("ddpm", {})}

    def table(values: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())  # JSON scalars/lists are TOML

    text = f"""
[[models]]
dataset = "mnist"
sampler = "ddgan"
path = "tiny-ddgan"
device = "cpu"
{table(ddgan)}

[[models]]
dataset = "mnist"
sampler = "ddpm"
path = "tiny-ddpm"
device = "cpu"
{table(ddpm)}

[[models]]
dataset = "celebahq"
sampler = "ddgan"
path = "celebahq"
install = "ddgan convert netG_550.pth --preset celebahq -o models/celebahq"
"""
    path = root / "registry.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def registry_path(tiny_models: Path) -> Path:
    return write_registry(tiny_models)


class Gate:
    """Blocks a sampler inside `sample` until released: makes queue states deterministic without sleeps.

    Only batches whose first seed is >= `GATED_SEEDS` block, so warm-up (seeds 0, 1, ...) runs through.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def wait_entered(self, timeout: float = 10.0) -> None:
        assert self.entered.wait(timeout), "the sampler was never called"


class WrappedSampler:
    """Delegates to a real sampler; can fail on a poison seed or block on a gate."""

    def __init__(self, inner: Any, poison_seed: int | None = None, gate: Gate | None = None) -> None:
        self.inner = inner
        self.poison_seed = poison_seed
        self.gate = gate
        self.calls: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def with_micro_batch(self, micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> WrappedSampler:
        wrapped = WrappedSampler(self.inner.with_micro_batch(micro_batch, remainder_sizes), self.poison_seed, self.gate)
        wrapped.calls = self.calls  # one record of the calls, whichever sampler serves
        return wrapped

    def sample(self, seeds: list[int], **kwargs: Any) -> Any:
        self.calls.append(list(seeds))
        if self.gate is not None and seeds[0] >= GATED_SEEDS:
            self.gate.entered.set()
            self.gate.release.wait(30)
        if self.poison_seed is not None and self.poison_seed in seeds:
            raise RuntimeError(f"poisoned seed {self.poison_seed}")
        return self.inner.sample(seeds, **kwargs)


def wrapping_loader(**wrappers: dict[str, Any]) -> tuple[Callable[..., Sampler], dict[str, WrappedSampler]]:
    """A `load_model` for create_app that wraps the samplers named like `ddgan=dict(gate=...)`."""
    made: dict[str, WrappedSampler] = {}

    def load(entry: ModelEntry, **kwargs: Any) -> Any:
        sampler = load_entry(entry, **kwargs)
        if entry.sampler in wrappers:
            wrapped = WrappedSampler(sampler, **wrappers[entry.sampler])
            made[entry.sampler] = wrapped
            return wrapped
        return sampler

    return load, made


def make_app(registry: Path, load_model: Callable[..., Sampler] | None = None, **settings: Any) -> FastAPI:
    config = ServerSettings(registry=registry, png_workers=2, **settings)
    return create_app(config, registry=load_registry(registry), load_model=load_model)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, wait for its models, and give an httpx client on the ASGI app."""
    async with app.router.lifespan_context(app):
        await app.state.engine.wait_loaded(120)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


# Every test module of this package runs on one event loop per module (pytestmark in each module), so that the
# module-scoped `client` (one app for the tests that need no special configuration) can be shared.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_models: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The shared app: tiny mnist models, n <= 8, bodies <= 4096 bytes. Tests on it compare metric deltas."""
    app = make_app(write_registry(tiny_models), max_images_per_request=8, max_body_bytes=4096)
    async with serving(app) as shared:
        yield shared


@pytest_asyncio.fixture(loop_scope="module")
async def started() -> AsyncIterator[Callable[[FastAPI], Any]]:
    """`client = await started(app)`: a dedicated app for a test that needs its own registry or settings."""
    async with AsyncExitStack() as stack:

        async def start(app: FastAPI) -> httpx.AsyncClient:
            return await stack.enter_async_context(serving(app))

        yield start


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The one error shape, checked: returns the inner `error` object."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"type", "message", "status", "request_id"} <= set(error), error
    assert error["status"] == response.status_code
    assert error["request_id"] == response.headers["x-request-id"]
    assert isinstance(error["message"], str) and error["message"]
    return error
