"""The CIFAR-10 python batches (`data_batch_1..5`, `test_batch`), read without trusting the pickles.

Each batch is a pickled dict holding a uint8 array `data` (N, 3072) (channel-major 3×32×32 rows) and a list
`labels`. A pickle can run arbitrary code on load, so `NumpyOnlyUnpickler` resolves only the few numpy globals
that rebuild arrays; any other global (os.system, builtins.eval, a class) is refused.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from ddgan.training.datasets import DataError

BATCHES_FOLDER = "cifar-10-batches-py"


def _numpy_global(modules: tuple[str, ...], name: str) -> Any:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(str, "latin1"); allow no other codec.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a data pickle")
    return text.encode("latin1")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in _MULTIARRAY:
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _numpy_global(_MULTIARRAY, "_reconstruct")
    _ALLOWED_GLOBALS[(_module, "scalar")] = _numpy_global(_MULTIARRAY, "scalar")
for _module in _NUMERIC:
    _ALLOWED_GLOBALS[(_module, "_frombuffer")] = _numpy_global(_NUMERIC, "_frombuffer")
_ALLOWED_GLOBALS = {key: value for key, value in _ALLOWED_GLOBALS.items() if value is not None}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: data pickles may only hold numpy arrays"
            ) from None


def load_batch_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: images (N, 32, 32, 3) uint8 and labels (N,) int64."""
    try:
        with path.open("rb") as handle:
            batch = NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: a CIFAR-10 batch is a dict, got {type(batch).__name__}")
    entries = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data, labels = entries.get("data"), entries.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072), got {type(data).__name__} {shape}")
    label_array = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if label_array.shape != (data.shape[0],):
        raise DataError(f"{path}: 'labels' must hold {data.shape[0]} integers, got shape {label_array.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), label_array


def load_cifar10(path: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """All train (`data_batch_N`) or test (`test_batch`) images of a batches folder (or its parent)."""
    if not path.is_dir():
        raise DataError(f"{path}: dataset 'cifar10' needs the extracted {BATCHES_FOLDER} folder")
    if (path / BATCHES_FOLDER).is_dir():
        path = path / BATCHES_FOLDER
    if train:
        numbered = [
            (int(match.group(1)), item)
            for item in path.iterdir()
            if (match := re.fullmatch(r"data_batch_(\d+)", item.name))
        ]
        files = [item for _, item in sorted(numbered)]
    else:
        files = [path / "test_batch"] if (path / "test_batch").is_file() else []
    if not files:
        wanted = "data_batch_1..5" if train else "test_batch"
        raise DataError(f"{path}: no CIFAR-10 python batches ({wanted}) found")
    loaded = [load_batch_file(item) for item in files]
    return np.concatenate([images for images, _ in loaded]), np.concatenate([labels for _, labels in loaded])
