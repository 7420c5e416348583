"""Image datasets: every source held as uint8 (C, H, W) images, converted to float32 in [-1, 1] per item or batch.

Images stay uint8 (in memory or on disk) and become float only when read, as the official
`ToTensor() + Normalize(0.5, 0.5)` would give them (x / 127.5 - 1). Horizontal flips are not a property of a
dataset: `training.data.BatchStream` draws them with the data order, from (seed, epoch), so they replay on resume.
The on-disk formats with their own readers (`training.cifar_data`, `training.lmdb_data`) build on this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ddgan.model.images import uint8_to_float

# What an image folder may hold (training data and evaluation references alike); PIL decodes them all.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(ValueError):
    """The training data is missing, in an unknown format, or does not fit the requested image shape."""


class ImageDataset(Dataset[Tensor]):
    """Base class: subclasses return uint8 batches; items are converted to float on access.

    `in_memory` tells `BatchStream` it can gather batches by indexing in the main process (no workers needed).
    """

    in_memory = False

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        self.image_shape = image_shape

    def __len__(self) -> int:
        raise NotImplementedError

    def uint8_batch(self, indices: Sequence[int] | Tensor) -> Tensor:
        """(B, C, H, W) uint8 images for the given indices (no flip)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return uint8_to_float(self.uint8_batch([index])[0])


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one uint8 tensor (N, C, H, W)."""

    in_memory = True

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        channels, height, width = images.shape[1:]
        super().__init__((channels, height, width))
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

    def __init__(self, digits: Tensor, digit_labels: Tensor, *, seed: int = 0) -> None:
        if digits.ndim != 4 or digits.shape[1] != 1:
            raise DataError(f"stacked_mnist needs 1-channel digits (N, 1, H, W), got {tuple(digits.shape)}")
        super().__init__((3, digits.shape[2], digits.shape[3]))
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
    """Every image file under a folder (recursively, sorted by path), decoded and resized per item."""

    def __init__(self, root: Path, image_size: int, channels: int) -> None:
        super().__init__((channels, image_size, image_size))
        self.files = image_files(root)
        if not self.files:
            raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found in this folder tree")
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


def image_files(root: Path) -> list[Path]:
    """The image files (`IMAGE_SUFFIXES`, any case) under a folder tree, sorted by path."""
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())


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
