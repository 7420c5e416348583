"""Stage `env`: the machine, the versions, and whether the project's modules import with the carried wheels."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys

from ddgan.bench.gpu.common import Plan, StageRecord, describe_error

# Distributions whose versions go into the results: the host's stack and the wheels bench/gpu/wheels.txt carries.
PACKAGES = (
    "torch", "triton", "numpy", "safetensors", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt",
    "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "pydantic-settings", "typing-extensions",
    "opentelemetry-api", "diffusers", "huggingface-hub", "httpx", "prometheus-client", "pillow", "tqdm", "pytest",
)  # fmt: skip
# The modules every later stage needs: a failure here names the missing wheel before any GPU time is spent.
MODULES = ("ddgan.model.sampler", "ddgan.export.backends", "ddgan.server.app", "uvicorn")


def nvidia_smi() -> str | None:
    """`nvidia-smi`'s one-line view of each GPU (name, driver, memory, clocks), or None where it is absent."""
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or done.stderr.strip() or None


def run(stage: str, plan: Plan, record: StageRecord) -> bool:
    import torch

    from ddgan.bench.sampler import cpu_model

    record.add(item="python", value=sys.version.split()[0], ok=True)
    record.add(item="platform", value=platform.platform(), ok=True)
    record.add(item="cpu", value=f"{cpu_model()}, {os.cpu_count()} logical CPUs", ok=True)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    record.add(item="packages", value=", ".join(f"{k} {v}" for k, v in versions.items()), ok=True)
    imports_ok = True
    for module in MODULES:
        try:
            importlib.import_module(module)
            record.add(item=f"import {module}", value="ok", ok=True)
        except Exception as exc:  # a missing wheel: every stage that needs the module fails, say which
            imports_ok = False
            record.add(item=f"import {module}", value=describe_error(exc), ok=False)

    cuda = torch.cuda.is_available()
    record.add(item="torch", value=f"{torch.__version__}, CUDA {torch.version.cuda}", ok=True)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        record.add(
            item="gpu",
            value=f"{props.name}, capability {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.0f} GiB; cuDNN {torch.backends.cudnn.version()}",
            ok=True,
        )
    record.add(item="nvidia-smi", value=nvidia_smi() or "not available", ok=True)
    if imports_ok:
        from ddgan.export.backends import register
        from ddgan.model.sampler import backend_availability

        register()
        reasons = backend_availability(plan.device)
        record.add(
            item=f"backends on {plan.device}",
            value="; ".join(f"{name}: {reason or 'available'}" for name, reason in sorted(reasons.items())),
            ok=True,
        )
    device_ok = plan.smoke or cuda
    if not device_ok:
        record.add(item="cuda", value="CUDA is not available: use --cpu-smoke on a machine without a GPU", ok=False)
    where = torch.cuda.get_device_name(0) if cuda else f"CPU {cpu_model()}"
    record.set_summary(f"{where}; torch {torch.__version__}" + ("" if imports_ok else "; imports FAILED"))
    return imports_ok and device_ok
