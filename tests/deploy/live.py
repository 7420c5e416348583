"""Real processes for the deployment tests: tiny models, a `ddgan serve` subprocess, a Prometheus subprocess."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx
import yaml

from tests.deploy.promql import REPO, RULES

DATASET = "tiny"
DDPM_STEPS = 2  # a tiny baseline step count keeps the live test short; the stack's metrics are the same


def load_loadgen() -> ModuleType:
    """docker/loadgen.py as a module (it is a script in the image, not part of a package)."""
    spec = importlib.util.spec_from_file_location("ddgan_loadgen", REPO / "docker" / "loadgen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_tiny_models(root: Path) -> Path:
    """A tiny DDGAN and a tiny DDPM of one dataset, plus their registry; returns the registry path."""
    from diffusers import DDPMScheduler

    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
    from ddgan.model.ddpm_io import build_unet, save_ddpm
    from ddgan.model.sampler import random_generator

    generator = GeneratorConfig(
        num_channels=1,
        num_channels_dae=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        image_size=16,
        nz=8,
        z_emb_dim=16,
        n_mlp=1,
    )
    config = ModelConfig(
        preset="custom", generator=generator, diffusion=DiffusionConfig(num_timesteps=2), dataset=DATASET
    )
    save_model(root / "tiny-ddgan", config, random_generator(config).state_dict())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    save_ddpm(root / "tiny-ddpm", build_unet("tiny", num_channels=1), scheduler, dataset=DATASET, default_steps=4)
    registry = root / "registry.toml"
    registry.write_text(
        f"""
[[models]]
dataset = "{DATASET}"
sampler = "ddgan"
path = "tiny-ddgan"
device = "cpu"
max_batch_images = 8
max_wait_ms = 5
max_queue_images = 64
warmup_batch_sizes = [1]

[[models]]
dataset = "{DATASET}"
sampler = "ddpm"
path = "tiny-ddpm"
device = "cpu"
max_batch_images = 4
max_wait_ms = 5
max_queue_images = 8
default_steps = {DDPM_STEPS}
warmup_batch_sizes = [1]
"""
    )
    return registry


def _wait_http(url: str, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.is_success:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s ({last}):\n{log.read_text()[-4000:]}")


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def ddgan_serve(registry: Path, workdir: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """`ddgan serve` on a free loopback port; yields its base URL once /readyz answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDGAN_")}
    env.update({"DDGAN_PNG_WORKERS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    command = [sys.executable, "-m", "ddgan", "serve", "--registry", str(registry)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with _process(command, workdir / "serve.log", env) as process:
        _wait_http(f"{url}/readyz", timeout_s, process, workdir / "serve.log")
        yield url


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@contextmanager
def prometheus(target: str, workdir: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """The Debian Prometheus scraping `target` (host:port) every second with the stack's recording rules."""
    binary = prometheus_binary()
    assert binary, "prometheus is not installed"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "ddgan", "static_configs": [{"targets": [target]}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(command, workdir / "prometheus.log") as process:
        _wait_http(f"{url}/-/ready", timeout_s, process, workdir / "prometheus.log")
        yield url


def query(prometheus_url: str, expr: str) -> list[dict]:
    """An instant query; raises with Prometheus' own message when the expression is invalid."""
    response = httpx.post(f"{prometheus_url}/api/v1/query", data={"query": expr}, timeout=10.0)
    body = response.json()
    if body.get("status") != "success":
        raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]
