"""Training data: every supported format as a Dataset of (C, H, W) float32 images in [-1, 1].

Images stay uint8 (in memory or on disk) and become float only per item or per batch, as the official
`ToTensor() + Normalize(0.5, 0.5)` would give them (x / 127.5 - 1). Every check on the source (path, format,
shapes) runs in `build_dataset`, before any training work starts.

Formats (ddgan-spec.md §5 "Data"):
- `mnist`: a Keras-layout `.npz` (`x_train`/`x_test` uint8, (N, H, W) or (N, H, W, C)); 28 → 32 is a zero
  pad of 2 (the official `Pad(2)`, i.e. -1 after normalisation), other sizes are resized and center-cropped.
- `stacked_mnist`: three random MNIST digits as the R, G, B channels, 2× the MNIST set, labels in 0..999.
- `image_folder`: any tree of PNG/JPEG files, resized (shorter side) and center-cropped, decoded lazily.
- `cifar10`: the CIFAR-10 python batches (`data_batch_1..5`, `test_batch`), unpickled with numpy-only globals.
- `lmdb`: the NVAE-format LMDB the official CelebA-HQ recipe uses (optional extra `lmdb`).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

DATASET_KINDS = ("auto", "mnist", "stacked_mnist", "image_folder", "cifar10", "lmdb")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """The training data is missing, in an unknown format, or does not fit the requested image shape."""


def uint8_to_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (ToTensor + Normalize((0.5,), (0.5,)))."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class ImageDataset(Dataset[Tensor]):
    """Base class: subclasses return uint8 batches; items are converted to float (and flipped) on access.

    `in_memory` tells `BatchStream` it can gather batches by indexing in the main process (no workers needed).
    """

    in_memory = False

    def __init__(self, image_shape: tuple[int, int, int], hflip: bool) -> None:
        self.image_shape = image_shape
        self.hflip = hflip

    def __len__(self) -> int:
        raise NotImplementedError

    def uint8_batch(self, indices: Sequence[int] | Tensor) -> Tensor:
        """(B, C, H, W) uint8 images for the given indices (no flip)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image = uint8_to_float(self.uint8_batch([index])[0])
        if self.hflip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one uint8 tensor (N, C, H, W)."""

    in_memory = True

    def __init__(self, images: Tensor, hflip: bool = False, labels: Tensor | None = None) -> None:
        super().__init__(tuple(images.shape[1:]), hflip)  # type: ignore[arg-type]
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def uint8_batch(self, indices: Sequence[int] | Tensor) -> Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]


class StackedMNIST(ImageDataset):
    """Stacked MNIST: each sample puts three MNIST digits into its R, G, B channels.

    As the official dataset: the set is twice the MNIST set; channel k's digit order is the concatenation of two
    random permutations of MNIST, drawn once from a fixed seed. The label of a sample is
    100·digit_R + 10·digit_G + digit_B (1000 modes). Only the (padded) 1-channel digits are stored.
    """

    in_memory = True

    def __init__(self, digits: Tensor, digit_labels: Tensor, *, seed: int = 0, hflip: bool = False) -> None:
        if digits.ndim != 4 or digits.shape[1] != 1:
            raise DataError(f"stacked_mnist needs 1-channel digits (N, 1, H, W), got {tuple(digits.shape)}")
        super().__init__((3, digits.shape[2], digits.shape[3]), hflip)
        rng = np.random.default_rng(seed)
        count = digits.shape[0]
        order = np.stack([np.concatenate([rng.permutation(count), rng.permutation(count)]) for _ in range(3)], 1)
        self.digits = digits
        self.digit_indices = torch.from_numpy(order)  # (2N, 3): MNIST index of the R, G, B digit
        stacked = digit_labels.to(torch.long)[self.digit_indices]
        self.labels = stacked[:, 0] * 100 + stacked[:, 1] * 10 + stacked[:, 2]

    def __len__(self) -> int:
        return self.digit_indices.shape[0]

    def uint8_batch(self, indices: Sequence[int] | Tensor) -> Tensor:
        picked = self.digit_indices[torch.as_tensor(indices, dtype=torch.long)]  # (B, 3)
        batch = self.digits[picked]  # (B, 3, 1, H, W)
        return batch.reshape(batch.shape[0], 3, *batch.shape[3:])


class ImageFolderDataset(ImageDataset):
    """Every PNG/JPEG under a folder (recursively, sorted by path), decoded and resized per item."""

    def __init__(self, root: Path, image_size: int, channels: int, hflip: bool = False) -> None:
        super().__init__((channels, image_size, image_size), hflip)
        self.files = sorted(
            path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        )
        if not self.files:
            raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found in this folder tree")
        self.image_size = image_size
        self.channels = channels
        self._load(0)  # fail now, not in a DataLoader worker, if the files are not images

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> np.ndarray:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return pil_to_array(image, self.image_size, self.channels)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot be read as an image ({exc})") from exc

    def uint8_batch(self, indices: Sequence[int] | Tensor) -> Tensor:
        arrays = [self._load(int(index)) for index in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def pil_to_array(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """Convert to L/RGB, resize the shorter side to `image_size` (bilinear), center-crop: (H, W, C) uint8."""
    image = image.convert("RGB")
    if channels == 1:
        image = image.convert("L")
    width, height = image.size
    if (width, height) != (image_size, image_size):
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left = round((size[0] - image_size) / 2)
        top = round((size[1] - image_size) / 2)
        image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def fit_array(images: np.ndarray, image_size: int, channels: int) -> Tensor:
    """(N, H, W, C) uint8 -> (N, channels, image_size, image_size) uint8 tensor.

    Channels: gray is repeated to RGB; RGB becomes gray with PIL's ITU-R 601-2 luma. Size: a square image smaller
    by an even margin is zero-padded (the official MNIST `Pad(2)`), anything else is resized and center-cropped.
    """
    height, width, in_channels = images.shape[1:]
    if in_channels == 1 and channels == 3:
        images = np.repeat(images, 3, axis=3)
    elif in_channels == 3 and channels == 1:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        images = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    if height == width == image_size:
        fitted = images
    elif height == width and image_size > height and (image_size - height) % 2 == 0:
        margin = (image_size - height) // 2
        fitted = np.pad(images, ((0, 0), (margin, margin), (margin, margin), (0, 0)))
    else:
        mode = "L" if channels == 1 else "RGB"
        fitted = np.stack(
            [
                pil_to_array(Image.fromarray(image.squeeze(-1) if channels == 1 else image, mode), image_size, channels)
                for image in images
            ]
        )
    return torch.from_numpy(np.ascontiguousarray(fitted)).permute(0, 3, 1, 2).contiguous()


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
    hflip: bool = False,
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
            return ArrayImageDataset(fit_array(images, image_size, channels), hflip, label_tensor)
        if channels != 3:
            raise DataError(f"stacked_mnist images have 3 channels, got channels={channels}")
        if images.shape[3] != 1 or labels is None:
            raise DataError(f"{path}: stacked_mnist needs gray digits (N, H, W) and their labels y_*")
        digits = fit_array(images, image_size, 1)
        return StackedMNIST(digits, torch.from_numpy(labels.astype(np.int64)), seed=seed, hflip=hflip)
    if kind == "image_folder":
        if not path.is_dir():
            raise DataError(f"{path}: dataset 'image_folder' needs a folder")
        return ImageFolderDataset(path, image_size, channels, hflip)
    if kind == "cifar10":
        from ddgan.training.cifar_data import load_cifar10

        images, labels = load_cifar10(path, train)
        return ArrayImageDataset(fit_array(images, image_size, channels), hflip, torch.from_numpy(labels))
    from ddgan.training.lmdb_data import LMDBImageDataset

    return LMDBImageDataset(path, image_size, channels, train=train, hflip=hflip)


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

    Epoch e's order (and its horizontal flips when `dataset.hflip`) comes from a generator seeded with
    (seed, e), so a run resumed at step k sees exactly the batches an uninterrupted run sees from step k on,
    without saving any loader state. With `world_size` > 1 each rank takes disjoint batches of every epoch,
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

    def epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor]:
        """This rank's (steps_per_epoch, batch_size) image indices and horizontal-flip mask for `epoch`."""
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        used = self.steps_per_epoch * self.batch_size * self.world_size
        shape = (self.steps_per_epoch, self.world_size, self.batch_size)
        order = torch.randperm(len(self.dataset), generator=generator)[:used].view(shape)
        flips = torch.rand(shape, generator=generator) < 0.5
        return order[:, self.rank].contiguous(), flips[:, self.rank].contiguous()

    def batches(self, start_step: int = 0):
        """Yield batches forever, beginning with the batch of global step `start_step`."""
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        while True:
            order, flips = self.epoch_plan(epoch)
            for step_in_epoch, uint8 in enumerate(self._uint8_batches(order[offset:]), start=offset):
                images = uint8_to_float(uint8)
                if self.dataset.hflip:
                    flip = flips[step_in_epoch].view(-1, 1, 1, 1)
                    images = torch.where(flip, images.flip(-1), images)
                yield images
            epoch, offset = epoch + 1, 0

    def __iter__(self):
        return self.batches(0)

    def _uint8_batches(self, order: Tensor):
        if self.dataset.in_memory or self.num_workers == 0:
            return (self.dataset.uint8_batch(indices) for indices in order)
        loader = torch.utils.data.DataLoader(
            _EpochBatches(self.dataset, order), batch_size=None, shuffle=False, num_workers=self.num_workers
        )
        return iter(loader)
