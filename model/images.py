"""Converting between images in [-1, 1] and uint8 pixels, PNG bytes and grids."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, mapping x -> round((x + 1) / 2 * 255) with clamping."""
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return scaled.to("cpu").byte().permute(0, 2, 3, 1).numpy()


def uint8_to_float(images: Tensor | np.ndarray, channels_last: bool = False) -> Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] as x / 127.5 - 1 (`ToTensor + Normalize(0.5, 0.5)`; the inverse of
    `to_uint8` on its levels). `channels_last`: the input is (..., H, W, C), as `to_uint8` and PIL give it, and
    the result is (..., C, H, W); otherwise the layout is kept."""
    pixels = torch.as_tensor(images)
    if channels_last:
        pixels = pixels.movedim(-1, -3)
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """One (H, W, C) uint8 image as PNG; level 1 because encode time is on the request path."""
    mode_image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buffer = io.BytesIO()
    mode_image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (B, H, W, C) uint8 images into one (rows*(H+p)+p, cols*(W+p)+p, C) image on a black background."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top : top + height, left : left + width] = images[index]
    return grid
