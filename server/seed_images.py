"""The images of a request's seeds, PNG cache first: only the seeds it misses go to the model's queue.

Used by /generate and /v1/images alike (server/serving.py), and fed by async jobs' results, so a seed seen by
any of them costs no sampler time the next time. Fresh images are encoded once, per image, and kept in the
cache; a grid decodes the cached ones.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ddgan.model.sampling import SamplerInfo
from ddgan.server.encoding import encode_pngs
from ddgan.server.engine import Generated
from ddgan.server.png_cache import CacheUse, ImageAddress, PngCache

# generate(seeds) -> the images of those seeds (the serving layer's queue call, errors already HTTP-shaped)
Generate = Callable[[list[int]], Awaitable[Generated]]


@dataclass(frozen=True)
class SeedImages:
    addresses: list[ImageAddress]
    pngs: list[bytes]  # one per seed, in seed order
    generated: np.ndarray  # (m, H, W, C) uint8: the images of the seeds the cache missed
    missed: list[int]  # their positions among the seeds
    queue_s: float
    inference_s: float
    png_s: float  # encoding the generated images
    replica: str | None = None  # the replica that generated the missed seeds (`X-Replica`), where known

    @property
    def cached(self) -> int:
        return len(self.pngs) - len(self.missed)

    async def pixels(self, pool: Executor) -> np.ndarray:
        """(n, H, W, C) uint8 of every seed: the generated ones as they are, the cached ones decoded."""
        if not self.cached:
            return self.generated
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(pool, _decode_all, self.pngs)
        for position, image in zip(self.missed, self.generated, strict=True):
            decoded[position] = image
        return decoded


def _decode_all(pngs: list[bytes]) -> np.ndarray:
    images = [np.asarray(Image.open(io.BytesIO(png))) for png in pngs]
    return np.stack([image[:, :, None] if image.ndim == 2 else image for image in images])


async def seed_images(
    dataset: str,
    info: SamplerInfo,
    seeds: list[int],
    steps: int,
    generate: Generate,
    cache: PngCache,
    pool: Executor,
    workers: int,
    png_level: int,
    use: CacheUse,
) -> SeedImages:
    addresses = [ImageAddress.of(dataset, info, seed, steps, png_level) for seed in seeds]
    found = cache.lookup(addresses, use)
    missed = [position for position, png in enumerate(found) if png is None]
    if not missed:
        empty = np.zeros((0, *info.image_shape[1:], info.image_shape[0]), np.uint8)
        return SeedImages(addresses, [png for png in found if png is not None], empty, [], 0.0, 0.0, 0.0)
    result = await generate([seeds[position] for position in missed])
    fresh, png_s = await _encode(result, [addresses[p] for p in missed], cache if use.write else None, pool, workers)
    pngs = list(found)
    for position, png in zip(missed, fresh, strict=True):
        pngs[position] = png
    complete = [png for png in pngs if png is not None]
    return SeedImages(
        addresses, complete, result.images, missed, result.queue_s, result.inference_s, png_s, result.replica
    )


async def encoded_images(
    dataset: str,
    info: SamplerInfo,
    seeds: list[int],
    steps: int,
    result: Generated,
    cache: PngCache,
    pool: Executor,
    workers: int,
    png_level: int,
) -> SeedImages:
    """Images generated elsewhere (an async job's), encoded and kept in the cache."""
    addresses = [ImageAddress.of(dataset, info, seed, steps, png_level) for seed in seeds]
    pngs, png_s = await _encode(result, addresses, cache, pool, workers)
    every = list(range(len(seeds)))
    return SeedImages(addresses, pngs, result.images, every, result.queue_s, result.inference_s, png_s, result.replica)


async def _encode(
    result: Generated, addresses: list[ImageAddress], cache: PngCache | None, pool: Executor, workers: int
) -> tuple[list[bytes], float]:
    """One PNG per generated image (kept in `cache` unless None), and the seconds it took."""
    started = time.perf_counter()
    pngs = await encode_pngs(result.images, pool, workers, addresses[0].png_level)
    png_s = time.perf_counter() - started
    if cache is not None:
        for address, png in zip(addresses, pngs, strict=True):
            cache.store(address, png)
    return pngs, png_s
