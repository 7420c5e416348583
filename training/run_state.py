"""Atomic, pickle-free training checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is a directory `checkpoints/step_NNNNNNNN/` holding `state.safetensors` + `state.json`. It is
written under a temporary name (`.step_NNNNNNNN.*`, removed by `clean_staging` if a crash leaves one) and
renamed into place, then `checkpoints/latest.json` (written atomically) points at it, so a crash at any moment
leaves the previous checkpoint intact. A checkpoint damaged later (a full disk, a copy cut short) is skipped by
`load_newest`, which falls back to the newest one that loads.

Nested state (optimizer state_dicts, ...) is flattened: each tensor is stored under its path ("optim_g/state/3/
exp_avg") and replaced in the JSON by {"__tensor__": path}.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.file_checks import safetensors_problem

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"
_TENSOR_KEY = "__tensor__"
SUPERSEDED_DIR = "superseded"  # checkpoints newer than the one a run resumed from, kept aside
_STEP_PREFIX = "step_"


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


def checkpoint_name(step: int) -> str:
    return f"{_STEP_PREFIX}{step:08d}"


def save_run_state(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as the checkpoint of `step`, point latest.json at it, keep the newest `keep` checkpoints.

    Checkpoints of this or later steps are from a history the run left (it resumed from an older one, skipping a
    damaged or unwanted newer one): they move to `checkpoints/superseded/`, so "newest" is the run's own again.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    meta = _flatten(state, "", tensors)
    final = root / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        save_file(tensors, staging / TENSORS_FILE)
        (staging / META_FILE).write_text(json.dumps({"step": step, "state": meta}))
        for later_step, later in checkpoint_dirs(run_dir):
            if later_step >= step:
                _set_aside(later)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_bytes(root / LATEST_FILE, json.dumps({"step": step, "path": final.name}).encode())
    checkpoints = [path for _, path in checkpoint_dirs(run_dir)]  # newest first
    for old in checkpoints[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _set_aside(checkpoint: Path) -> None:
    aside = checkpoint.parent / SUPERSEDED_DIR / checkpoint.name
    shutil.rmtree(aside, ignore_errors=True)
    aside.parent.mkdir(exist_ok=True)
    checkpoint.rename(aside)
    logger.warning("moved %s (not in the history this run resumed from) to %s", checkpoint, aside)


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every `step_N` checkpoint directory of a run, the newest step first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    found = []
    for path in root.glob(f"{_STEP_PREFIX}*"):
        digits = path.name.removeprefix(_STEP_PREFIX)
        if path.is_dir() and digits.isdigit():
            found.append((int(digits), path))
    return sorted(found, reverse=True)


def clean_staging(run_dir: Path) -> list[Path]:
    """Remove what interrupted writes left in `checkpoints/` (staging folders, temporary files); what was removed."""
    root = Path(run_dir) / CHECKPOINT_DIR
    stale = sorted(root.glob(f".{_STEP_PREFIX}*")) + sorted(root.glob(f".{LATEST_FILE}.*.tmp"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def load_run_state(checkpoint: Path, device: str | torch.device = "cpu") -> tuple[int, dict[str, Any]]:
    """(step, state) of a checkpoint directory, tensors on `device`; RunStateError saying what is wrong."""
    checkpoint = Path(checkpoint)
    tensors_file, meta_file = checkpoint / TENSORS_FILE, checkpoint / META_FILE
    for required in (tensors_file, meta_file):
        if not required.is_file():
            raise RunStateError(f"{checkpoint} is not a training checkpoint: {required.name} is missing")
    problem = safetensors_problem(tensors_file)
    if problem is not None:
        raise RunStateError(f"{tensors_file}: {problem}")
    try:
        tensors = load_file(tensors_file, device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise RunStateError(f"{tensors_file}: not readable as safetensors ({exc or type(exc).__name__})") from exc
    try:
        meta = json.loads(meta_file.read_text())
        return int(meta["step"]), _unflatten(meta["state"], tensors)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        size = meta_file.stat().st_size
        what = "empty file (0 bytes)" if size == 0 else f"not valid JSON, truncated or damaged ({exc})"
        raise RunStateError(f"{meta_file}: {what}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise RunStateError(f"{meta_file}: not a checkpoint description (no {exc} where one belongs)") from exc


def load_newest(
    run_dir: Path, device: str | torch.device = "cpu"
) -> tuple[Path, int, dict[str, Any], list[tuple[Path, str]]] | None:
    """(checkpoint, step, state, skipped) of the newest checkpoint of a run that loads; None when it has none.

    `skipped` lists the newer checkpoints that did not load, with why. RunStateError when none of them loads.
    """
    skipped: list[tuple[Path, str]] = []
    for _, path in checkpoint_dirs(run_dir):
        try:
            step, state = load_run_state(path, device)
        except RunStateError as exc:
            skipped.append((path, str(exc)))
            continue
        return path, step, state, skipped
    if skipped:
        reasons = "; ".join(reason for _, reason in skipped)
        raise RunStateError(f"no checkpoint of {run_dir} loads ({len(skipped)} tried): {reasons}")
    return None


def resolve_checkpoint(run_dir: Path, spec: str) -> Path:
    """`--resume-from`: a step number of the run (`1200`) or a checkpoint directory's path."""
    path = Path(spec)
    if path.is_dir():
        return path
    if spec.isdigit():
        candidate = Path(run_dir) / CHECKPOINT_DIR / checkpoint_name(int(spec))
        if candidate.is_dir():
            return candidate
        steps = ", ".join(str(step) for step, _ in reversed(checkpoint_dirs(run_dir))) or "none"
        raise RunStateError(f"{run_dir} has no checkpoint at step {int(spec)} (steps it has: {steps})")
    raise RunStateError(f"--resume-from {spec}: neither a step number nor a checkpoint directory")
