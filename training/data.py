"""Training data: open any supported source as a Dataset (`training.datasets`), and the deterministic batch stream.

Every check on the source (path, format, shapes) runs in `build_dataset`, before any training work starts.
`BatchStream` makes the data order and the horizontal flips a function of (seed, epoch, rank), so a resumed run
sees the batches an uninterrupted one sees.

Formats (ddgan-spec.md §5 "Data"):
- `mnist`: a Keras-layout `.npz` (`x_train`/`x_test` uint8, (N, H, W) or (N, H, W, C)); 28 → 32 is a zero
  pad of 2 (the official `Pad(2)`, i.e. -1 after normalisation), other sizes are resized and center-cropped.
- `stacked_mnist`: three random MNIST digits as the R, G, B channels, 2× the MNIST set, labels in 0..999.
- `image_folder`: any tree of PNG/JPEG/BMP/WebP files, resized (shorter side) and center-cropped, decoded lazily.
- `cifar10`: the CIFAR-10 python batches (`data_batch_1..5`, `test_batch`), unpickled with numpy-only globals.
- `lmdb`: the NVAE-format LMDB the official CelebA-HQ recipe uses (optional extra `lmdb`).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ddgan.model.images import uint8_to_float
from ddgan.training.cifar_data import load_cifar10
from ddgan.training.datasets import (
    ArrayImageDataset,
    DataError,
    ImageDataset,
    ImageFolderDataset,
    StackedMNIST,
    fit_array,
)
from ddgan.training.lmdb_data import LMDBImageDataset
from ddgan.training.train_config import DATASET_KINDS

logger = logging.getLogger(__name__)


def load_npz(path: Path, train: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Keras-layout arrays: images (N, H, W, C) uint8 and labels (N,) or None."""
    split = "train" if train else "test"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if f"x_{split}" not in archive.files:
                raise DataError(
                    f"{path}: no 'x_{split}' array; expected the Keras layout (x_train, y_train, x_test, y_test), "
                    f"found {sorted(archive.files)}"
                )
            images = archive[f"x_{split}"]
            labels = archive[f"y_{split}"] if f"y_{split}" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if images.dtype != np.uint8:
        raise DataError(f"{path}: x_{split} must be uint8 in [0, 255], got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.shape[0] == 0:
        raise DataError(f"{path}: x_{split} must be (N, H, W) or (N, H, W, 1|3) with N > 0, got {images.shape}")
    if labels is not None and labels.shape != (images.shape[0],):
        raise DataError(f"{path}: y_{split} has shape {labels.shape}, expected ({images.shape[0]},)")
    return images, labels


def detect_kind(path: Path) -> str:
    """Guess the format of a data path (`dataset="auto"`)."""
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "mnist"
        raise DataError(
            f"{path}: unsupported data file; give a Keras-layout .npz, an image folder, the CIFAR-10 python "
            "batches folder or an NVAE-format LMDB folder"
        )
    if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
        return "cifar10"
    if (path / "train.lmdb").exists() or (path / "data.mdb").is_file():
        return "lmdb"
    return "image_folder"


def build_dataset(
    source: str | Path,
    image_size: int,
    channels: int,
    *,
    dataset: str = "auto",
    train: bool = True,
    seed: int = 0,
) -> ImageDataset:
    """Open `source` as a Dataset of (channels, image_size, image_size) float32 images in [-1, 1].

    `seed` only fixes the Stacked-MNIST digit combinations. Raises `DataError` before any work on bad input.
    """
    if dataset not in DATASET_KINDS:
        raise DataError(f"unknown dataset kind {dataset!r}; choose one of {', '.join(DATASET_KINDS)}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    kind = detect_kind(path) if dataset == "auto" else dataset
    logger.info("loading %s data from %s (%s split)", kind, path, "train" if train else "test")

    if kind in ("mnist", "stacked_mnist"):
        if not path.is_file():
            raise DataError(f"{path}: dataset {kind!r} needs a Keras-layout .npz file, not a folder")
        images, labels = load_npz(path, train)
        if kind == "mnist":
            label_tensor = None if labels is None else torch.from_numpy(labels.astype(np.int64))
            return ArrayImageDataset(fit_array(images, image_size, channels), label_tensor)
        if channels != 3:
            raise DataError(f"stacked_mnist images have 3 channels, got channels={channels}")
        if images.shape[3] != 1 or labels is None:
            raise DataError(f"{path}: stacked_mnist needs gray digits (N, H, W) and their labels y_*")
        digits = fit_array(images, image_size, 1)
        return StackedMNIST(digits, torch.from_numpy(labels.astype(np.int64)), seed=seed)
    if kind == "image_folder":
        if not path.is_dir():
            raise DataError(f"{path}: dataset 'image_folder' needs a folder")
        return ImageFolderDataset(path, image_size, channels)
    if kind == "cifar10":
        images, labels = load_cifar10(path, train)
        return ArrayImageDataset(fit_array(images, image_size, channels), torch.from_numpy(labels))
    return LMDBImageDataset(path, image_size, channels, train=train)


class _EpochBatches(Dataset[Tensor]):
    """One item per batch of an epoch, so DataLoader workers decode whole uint8 batches."""

    def __init__(self, dataset: ImageDataset, batch_indices: Tensor) -> None:
        self.dataset = dataset
        self.batch_indices = batch_indices

    def __len__(self) -> int:
        return self.batch_indices.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset.uint8_batch(self.batch_indices[index])


class BatchStream:
    """Endless, deterministic and resumable stream of float batches (B, C, H, W) in [-1, 1].

    Epoch e's order and, with `hflip`, which images of it are mirrored come from one generator seeded with
    (seed, e): a batch's images and flips are a function of (seed, rank, step, position in the batch), so a run
    resumed at step k sees exactly the batches an uninterrupted run sees from step k on, without saving any
    loader state. With `world_size` > 1 each rank takes disjoint batches of every epoch,
    like `DistributedSampler(drop_last=True)`. In-memory datasets are gathered by indexing in this process;
    others are decoded by `num_workers` DataLoader workers, one uint8 batch per item.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        hflip: bool = False,
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"bad batch layout: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.steps_per_epoch = len(dataset) // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the dataset has {len(dataset)} images, fewer than one global batch of "
                f"{batch_size} x {world_size} processes"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.hflip = hflip

    def epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor]:
        """This rank's (steps_per_epoch, batch_size) image indices and horizontal-flip mask for `epoch`."""
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        used = self.steps_per_epoch * self.batch_size * self.world_size
        shape = (self.steps_per_epoch, self.world_size, self.batch_size)
        order = torch.randperm(len(self.dataset), generator=generator)[:used].view(shape)
        flips = torch.rand(shape, generator=generator) < 0.5
        return order[:, self.rank].contiguous(), flips[:, self.rank].contiguous()

    def batches(self, start_step: int = 0) -> Iterator[Tensor]:
        """Yield batches forever, beginning with the batch of global step `start_step`."""
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        while True:
            order, flips = self.epoch_plan(epoch)
            for step_in_epoch, uint8 in enumerate(self._uint8_batches(order[offset:]), start=offset):
                images = uint8_to_float(uint8)
                if self.hflip:
                    flip = flips[step_in_epoch].view(-1, 1, 1, 1)
                    images = torch.where(flip, images.flip(-1), images)
                yield images
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[Tensor]:
        return self.batches(0)

    def _uint8_batches(self, order: Tensor) -> Iterator[Tensor]:
        if self.dataset.in_memory or self.num_workers == 0:
            return (self.dataset.uint8_batch(indices) for indices in order)
        loader = torch.utils.data.DataLoader(
            _EpochBatches(self.dataset, order), batch_size=None, shuffle=False, num_workers=self.num_workers
        )
        return iter(loader)
