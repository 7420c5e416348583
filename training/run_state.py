"""Atomic, pickle-free training checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is a directory `checkpoints/step_NNNNNNNN/` holding `state.safetensors` + `state.json`. It is
written under a temporary name and renamed into place, then `checkpoints/latest.json` (written atomically)
points at it, so a crash at any moment leaves the previous checkpoint intact and `latest.json` valid.

Nested state (optimizer state_dicts, ...) is flattened: each tensor is stored under its path ("optim_g/state/3/
exp_avg") and replaced in the JSON by {"__tensor__": path}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddgan.model.checkpoint import atomic_write_bytes

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"
_TENSOR_KEY = "__tensor__"


class RunStateError(RuntimeError):
    """A training checkpoint is missing or unreadable."""


def _flatten(value: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        tensors[path] = value.detach().to("cpu").contiguous().clone()
        return {_TENSOR_KEY: path}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, (str, int)):
                raise TypeError(f"unsupported state key type {type(key).__name__} at {path}")
        # JSON keys are strings: remember integer keys (optimizer state is keyed by parameter index).
        return {
            "__dict__": [[key, _flatten(item, f"{path}/{key}", tensors)] for key, item in value.items()],
        }
    if isinstance(value, (list, tuple)):
        return [_flatten(item, f"{path}/{i}", tensors) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"unsupported state value type {type(value).__name__} at {path}")


def _unflatten(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR_KEY in value:
            return tensors[value[_TENSOR_KEY]]
        return {key: _unflatten(item, tensors) for key, item in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(item, tensors) for item in value]
    return value


def save_run_state(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as the checkpoint of `step`, point latest.json at it, keep the newest `keep` checkpoints."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    meta = _flatten(state, "", tensors)
    final = root / f"step_{step:08d}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        save_file(tensors, staging / TENSORS_FILE)
        (staging / META_FILE).write_text(json.dumps({"step": step, "state": meta}))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_bytes(root / LATEST_FILE, json.dumps({"step": step, "path": final.name}).encode())
    checkpoints = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The directory latest.json points at, or None when the run has no checkpoint yet."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise RunStateError(f"{pointer} is corrupt: {exc}") from exc
    path = pointer.parent / name
    if not (path / TENSORS_FILE).is_file():
        raise RunStateError(f"{pointer} points at {path}, which has no {TENSORS_FILE}")
    return path


def load_run_state(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[int, dict[str, Any]]:
    """(step, state) of a checkpoint directory, tensors on `device`."""
    checkpoint = Path(checkpoint)
    try:
        tensors = load_file(checkpoint / TENSORS_FILE, device=str(device))
        meta = json.loads((checkpoint / META_FILE).read_text())
    except FileNotFoundError as exc:
        raise RunStateError(f"{checkpoint} is not a training checkpoint: {exc}") from exc
    except Exception as exc:  # safetensors and json raise their own error types
        raise RunStateError(f"cannot read the training checkpoint {checkpoint}: {exc}") from exc
    return int(meta["step"]), _unflatten(meta["state"], tensors)


def find_checkpoint(run_dir: Path) -> Path:
    """The run's latest checkpoint; FileNotFoundError naming what was looked for when there is none."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint (looked for {run_dir}/{CHECKPOINT_DIR}/{LATEST_FILE})")
    return path
