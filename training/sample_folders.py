"""Sample folders: `ddgan eval --save-samples` writes one PNG per seed plus a manifest; `--samples` scores folders.

A long evaluation (the DDPM at 1000 steps: about an hour per 1,000 MNIST images on two CPU cores) can then run in
shards, `--seed 0 --n 2500`, `--seed 2500 --n 2500`, ... into one folder or several, on different days, and be
scored once over all of them. The PNGs hold exactly the 8-bit levels `ddgan eval` scores, so scoring a folder
gives the figures a single run over the same seeds would. Folders of images from elsewhere (a server's
responses) score too; without a manifest their provenance is reported as unknown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.images import uint8_to_float

SAMPLE_NAME = re.compile(r"^(\d{8,})\.png$")
MANIFEST_GLOB = "samples-*.json"
MANIFEST_FORMAT = "ddgan-eval-samples"
# What fixes a seed's image (model/sampling.py SamplerInfo): shards that differ here are not one sample set.
IDENTITY_KEYS = ("sampler", "weights_digest", "backend", "device", "dtype", "steps", "image_shape")


class SampleFolderError(ValueError):
    """A sample folder that cannot be scored as one set of samples."""


def sample_file_name(seed: int) -> str:
    return f"{seed:08d}.png"


def write_manifest(folder: Path, identity: dict[str, Any], model: str, first_seed: int, last_seed: int) -> Path:
    """Record which sampler, weights and steps drew seeds first..last into `folder` (one file per shard)."""
    path = folder / f"samples-{first_seed:08d}-{last_seed:08d}.json"
    body = {"format": MANIFEST_FORMAT, "model": model, **identity, "seeds": [first_seed, last_seed]}
    atomic_write_bytes(path, (json.dumps(body, indent=2) + "\n").encode())
    return path


@dataclass
class SampleSet:
    """Images (N, C, H, W) in [-1, 1] on the 8-bit levels, their seeds (ascending), and what drew them."""

    images: torch.Tensor
    seeds: list[int]
    identity: dict[str, Any] | None  # None: no folder had a manifest
    models: list[str]


def _read_manifests(folders: list[Path]) -> tuple[dict[str, Any] | None, list[str], list[tuple[int, int]]]:
    """The shared identity of every manifest in the folders, the model paths they name, and their seed ranges."""
    manifests = []
    for folder in folders:
        for path in sorted(folder.glob(MANIFEST_GLOB)):
            try:
                body = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SampleFolderError(f"{path}: not a readable samples manifest ({exc})") from None
            seeds = body.get("seeds") if isinstance(body, dict) else None
            if not (
                isinstance(body, dict)
                and body.get("format") == MANIFEST_FORMAT
                and isinstance(seeds, list)
                and len(seeds) == 2
                and all(isinstance(seed, int) for seed in seeds)
            ):
                raise SampleFolderError(f"{path}: not a samples manifest (format {MANIFEST_FORMAT!r} expected)")
            manifests.append((path, body))
    if not manifests:
        return None, [], []
    first_path, first = manifests[0]
    identity = {key: first.get(key) for key in IDENTITY_KEYS}
    for path, body in manifests[1:]:
        for key in IDENTITY_KEYS:
            if body.get(key) != identity[key]:
                raise SampleFolderError(
                    f"{path} and {first_path} disagree on {key} ({body.get(key)!r} vs {identity[key]!r}): "
                    "not samples of one model"
                )
    ranges = [(body["seeds"][0], body["seeds"][1]) for _, body in manifests]
    return identity, sorted({str(body.get("model")) for _, body in manifests}), ranges


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB"):
                raise SampleFolderError(f"{path}: a {image.mode} image; sample PNGs are 8-bit gray (L) or RGB")
            pixels = np.asarray(image)
    except (OSError, SyntaxError) as exc:
        raise SampleFolderError(f"{path}: not a readable PNG ({exc})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def read_sample_folders(folders: list[str], limit: int | None = None) -> SampleSet:
    """Every `NNNNNNNN.png` of the folders as one sample set; `limit`: only the `limit` lowest seeds.

    Errors name the offending file: a seed in two folders, images of different shapes, an unreadable PNG, a
    manifest of another model. Files with other names (grids, notes) are ignored.
    """
    paths: dict[int, Path] = {}
    roots = [Path(folder) for folder in folders]
    for root in roots:
        if not root.is_dir():
            raise SampleFolderError(f"--samples {root}: not a directory")
        for path in root.iterdir():
            match = SAMPLE_NAME.match(path.name)
            if match is None:
                continue
            seed = int(match.group(1))
            if seed in paths:
                raise SampleFolderError(f"seed {seed} is in two folders: {paths[seed]} and {path}")
            paths[seed] = path
    if not paths:
        raise SampleFolderError(f"no sample PNGs (NNNNNNNN.png, as --save-samples writes) in {', '.join(folders)}")
    seeds = sorted(paths)
    if limit is not None:
        if limit > len(seeds):
            raise SampleFolderError(f"--n {limit}: the folders hold only {len(seeds)} samples")
        seeds = seeds[:limit]
    identity, models, ranges = _read_manifests(roots)
    if identity is not None:
        unrecorded = [seed for seed in seeds if not any(low <= seed <= high for low, high in ranges)]
        if unrecorded:
            raise SampleFolderError(
                f"{len(unrecorded)} samples (seed {unrecorded[0]}, ...) are not in any manifest's seed range: "
                "samples of unknown origin mixed with a model's"
            )
    arrays: list[np.ndarray] = []
    for seed in seeds:
        pixels = _read_png(paths[seed])
        if arrays and pixels.shape != arrays[0].shape:
            raise SampleFolderError(f"{paths[seed]} is {pixels.shape}, the first sample is {arrays[0].shape}")
        arrays.append(pixels)
    images = uint8_to_float(np.stack(arrays), channels_last=True)
    if identity is not None and identity.get("image_shape") not in (None, list(images.shape[1:])):
        raise SampleFolderError(f"the PNGs are {list(images.shape[1:])}, the manifests say {identity['image_shape']}")
    return SampleSet(images, seeds, identity, models)
