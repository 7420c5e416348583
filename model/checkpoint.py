"""Checkpoint I/O: our model directories (config.json + safetensors) and the official `netG_*.pth` files.

Nothing here unpickles arbitrary objects: official files go through `torch.load(weights_only=True)`, ours
are safetensors + JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddgan.model.config import ConfigError, ModelConfig
from ddgan.model.file_checks import safetensors_problem, torch_file_problem
from ddgan.model.ncsnpp import NCSNpp

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "generator.safetensors"
FORMAT_NAME = "ddgan-generator"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the requested architecture."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write then rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        make_readable(tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_readable(path: str | Path) -> None:
    """Give a file (or a directory tree) the modes the umask allows: mkstemp/mkdtemp and safetensors create
    0600/0700 entries, and model files must be readable by a server running as another user."""
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, 0o666 & ~umask)
        return
    os.chmod(path, 0o777 & ~umask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(Path(root) / name, 0o777 & ~umask)
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~umask)


def expected_state_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Key -> shape of the generator's state_dict, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        net = NCSNpp(config.generator)
    return {key: value.shape for key, value in net.state_dict().items()}


def check_state_dict(state_dict: Mapping[str, Tensor], config: ModelConfig) -> None:
    """Raise a `CheckpointError` naming the preset and every missing, unexpected or mis-shaped key."""
    expected = expected_state_shapes(config)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or mis_shaped:
        parts = [f"checkpoint does not match preset {config.preset!r}"]
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mis_shaped),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError("; ".join(parts))


def load_official_state_dict(path: str | Path, config: ModelConfig) -> dict[str, Tensor]:
    """Read an official `netG_*.pth` (with or without the DDP `module.` prefix) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"official checkpoint not found: {path}")
    problem = torch_file_problem(path)  # damage named in words, before torch.load's own messages
    if problem is not None:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {problem}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError as exc:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: truncated (the pickle ends early)") from exc
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # a damaged stream, not an object the safe loader refuses
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: damaged pickle ({exc})") from exc
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor state_dict (weights_only=True rejected it; "
            "official content.pth files pickle an argparse Namespace — convert the netG_*.pth instead)"
        ) from exc
    except Exception as exc:  # a damaged stream makes the unpickler raise any type (KeyError, ValueError ...)
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        if "unexpected EOF" in reason:
            reason = f"truncated ({reason})"
        elif not isinstance(exc, (RuntimeError, OSError)):
            reason = f"damaged ({type(exc).__name__}: {reason})"
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {reason}") from exc
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} does not hold a generator state_dict (a mapping of names to tensors)")
    state_dict = {key.removeprefix("module."): value.contiguous().clone() for key, value in raw.items()}
    check_state_dict(state_dict, config)
    return state_dict


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_digest(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of tensors (weights that never touched a file)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_digest(directory: str | Path) -> str:
    """sha256 of a model directory's weights file: exported artifacts record it to detect staleness."""
    return file_sha256(Path(directory) / WEIGHTS_FILE)


def save_model(directory: str | Path, config: ModelConfig, state_dict: Mapping[str, Tensor]) -> Path:
    """Write `config.json` and `generator.safetensors` (atomically, each file written then renamed)."""
    directory = Path(directory)
    check_state_dict(state_dict, config)
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous().clone() for key, value in state_dict.items()}
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT_NAME, "preset": config.preset})
        make_readable(tmp)  # after: safetensors recreates the file as 0600
        os.replace(tmp, directory / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config.to_dict()}
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model directory: {CONFIG_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if data.pop("format", FORMAT_NAME) != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a DDGAN generator config")
    data.pop("format_version", None)
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ModelConfig, NCSNpp]:
    """Rebuild the generator of a model directory in eval mode (strict key check)."""
    directory = Path(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    problem = safetensors_problem(weights)
    if problem is not None:
        raise CheckpointError(f"cannot read {weights}: {problem}")
    try:
        state_dict = load_file(weights, device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {weights}: {exc or type(exc).__name__}") from exc
    check_state_dict(state_dict, config)
    net = NCSNpp(config.generator)
    net.load_state_dict(state_dict, strict=True)
    return config, net.to(device).eval()


def convert_official(source: str | Path, config: ModelConfig, out_dir: str | Path) -> Path:
    """`ddgan convert`: official `netG_*.pth` -> our model directory."""
    state_dict = load_official_state_dict(source, config)
    config = config.replace(trained_on=f"official checkpoint {Path(source).name}")
    out = save_model(out_dir, config, state_dict)
    logger.info("converted %s (%d tensors) to %s", source, len(state_dict), out)
    return out
