"""Converting sampler output in [-1, 1] to uint8 images, PNG bytes and grids."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, mapping x -> round((x + 1) / 2 * 255) with clamping."""
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return scaled.to("cpu").byte().permute(0, 2, 3, 1).numpy()


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
