"""The NVAE-format LMDB used by the official CelebA-HQ 256 recipe (optional extra `lmdb`).

Layout (ddgan-spec.md §5): a folder with `train.lmdb` (and `validation.lmdb`), keys `str(index)`, values the raw
uint8 RGB bytes of one square image (H·W·3, no encoding). The environment is opened lazily in each process,
per process (keyed by pid), because an LMDB handle must not be used across a fork into DataLoader workers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddgan.training.datasets import DataError, ImageDataset, pil_to_array


def _import_lmdb() -> Any:
    try:
        import lmdb
    except ImportError as exc:
        raise DataError("reading an LMDB dataset needs the optional extra: pip install 'ddgan-serve[lmdb]'") from exc
    return lmdb


# One environment per (process, database): LMDB refuses a second open of the same database in one process.
_ENVIRONMENTS: dict[tuple[int, str], Any] = {}


def _environment(database: Path) -> Any:
    key = (os.getpid(), str(database.resolve()))
    if key not in _ENVIRONMENTS:
        lmdb = _import_lmdb()
        try:
            _ENVIRONMENTS[key] = lmdb.open(
                key[1], readonly=True, lock=False, readahead=False, meminit=False, max_readers=64
            )
        except lmdb.Error as exc:
            raise DataError(f"{database}: cannot open as an LMDB database ({exc})") from exc
    return _ENVIRONMENTS[key]


def _resolve_database(path: Path, train: bool) -> Path:
    """`path` may be the dataset folder (holding train.lmdb / validation.lmdb) or one .lmdb database."""
    name = "train.lmdb" if train else "validation.lmdb"
    if (path / name).exists():
        return path / name
    if (path / "data.mdb").is_file():
        return path
    raise DataError(f"{path}: no {name} (NVAE-format LMDB folder) found")


class LMDBImageDataset(ImageDataset):
    """Square raw-RGB images from an NVAE-format LMDB, resized to `image_size` per item."""

    def __init__(self, path: Path, image_size: int, channels: int, *, train: bool = True) -> None:
        super().__init__((channels, image_size, image_size))
        self.database = _resolve_database(path, train)
        self.image_size = image_size
        self.channels = channels
        self.length = int(_environment(self.database).stat()["entries"])
        if self.length == 0:
            raise DataError(f"{self.database}: the LMDB database is empty")
        self._read(0)  # fail now on a value that is not a raw square RGB image

    def __len__(self) -> int:
        return self.length

    def _read(self, index: int) -> np.ndarray:
        with _environment(self.database).begin(write=False) as txn:
            value = txn.get(str(index).encode())
        if value is None:
            raise DataError(f"{self.database}: key {str(index)!r} is missing (keys must be 0..{self.length - 1})")
        side = math.isqrt(len(value) // 3)
        if side * side * 3 != len(value) or side == 0:
            raise DataError(f"{self.database}: value of key {index} has {len(value)} bytes, not a square RGB image")
        image = np.frombuffer(value, dtype=np.uint8).reshape(side, side, 3)
        return pil_to_array(Image.fromarray(image, "RGB"), self.image_size, self.channels)

    def uint8_batch(self, indices: Any) -> Tensor:
        arrays = [self._read(int(index)) for index in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
