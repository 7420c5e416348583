"""Saved samples: `ddgan eval --save-samples` writes them, `--samples` scores them instead of sampling.

Two forms: a folder of one PNG per seed (`NNNNNNNN.png`) plus a manifest per shard (`samples-FIRST-LAST.json`),
or one `.npz` archive (`images` (N, H, W, C) uint8, `seeds` (N,), `manifest` a JSON string; no pickles), the
form a device run sends back. A long evaluation (the DDPM at 1000 steps: about an hour per 1,000 MNIST images on
two CPU cores) can then run in shards, `--seed 0 --n 2500`, `--seed 2500 --n 2500`, ..., on different days or
machines, and be scored once over all of them. Both forms hold exactly the 8-bit levels `ddgan eval` scores, so
scoring them gives the figures a single run over the same seeds would. PNGs from elsewhere (a server's
responses) score too; without a manifest their provenance is reported as unknown.
"""

from __future__ import annotations

import io
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
from ddgan.model.sampling import SamplerInfo

SAMPLE_NAME = re.compile(r"^(\d{8,})\.png$")
MANIFEST_GLOB = "samples-*.json"
MANIFEST_FORMAT = "ddgan-eval-samples"
# What fixes a seed's image (model/sampling.py SamplerInfo): shards that differ here are not one sample set.
IDENTITY_KEYS = ("sampler", "weights_digest", "backend", "device", "dtype", "steps", "image_shape")


class SampleFolderError(ValueError):
    """A sample folder that cannot be scored as one set of samples."""


def sample_file_name(seed: int) -> str:
    return f"{seed:08d}.png"


def sampler_identity(info: SamplerInfo, steps: int) -> dict[str, Any]:
    """The `IDENTITY_KEYS` of a sampler drawing at `steps`: what two shards must share to be one sample set."""
    return {
        "sampler": info.kind,
        "weights_digest": info.weights_digest,
        "backend": info.backend,
        "device": info.device.split(":", 1)[0],  # images repeat per device type, not per device index
        "dtype": info.dtype,
        "steps": steps,
        "image_shape": list(info.image_shape),
    }


def manifest(identity: dict[str, Any], model: str, seeds: list[int]) -> dict[str, Any]:
    """What drew `seeds`: the sampler's identity (`IDENTITY_KEYS`), the model path, the first and last seed."""
    return {"format": MANIFEST_FORMAT, "model": model, **identity, "seeds": [min(seeds), max(seeds)]}


def write_manifest(folder: Path, body: dict[str, Any]) -> Path:
    """A folder shard's manifest, named by its seed range (one file per shard)."""
    first, last = body["seeds"]
    path = folder / f"samples-{first:08d}-{last:08d}.json"
    atomic_write_bytes(path, (json.dumps(body, indent=2) + "\n").encode())
    return path


def write_archive(path: Path, pixels: np.ndarray, seeds: list[int], body: dict[str, Any]) -> Path:
    """Samples (N, H, W, C) uint8 with their seeds and manifest as one compressed `.npz`, written atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, images=pixels, seeds=np.asarray(seeds, dtype=np.int64), manifest=np.asarray(json.dumps(body))
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class SampleSet:
    """Images (N, C, H, W) in [-1, 1] on the 8-bit levels, their seeds (ascending), and what drew them."""

    images: torch.Tensor
    seeds: list[int]
    identity: dict[str, Any] | None  # None: no folder had a manifest
    models: list[str]


def _check_manifest(body: Any, where: str) -> dict[str, Any]:
    seeds = body.get("seeds") if isinstance(body, dict) else None
    if not (
        isinstance(body, dict)
        and body.get("format") == MANIFEST_FORMAT
        and isinstance(seeds, list)
        and len(seeds) == 2
        and all(isinstance(seed, int) for seed in seeds)
    ):
        raise SampleFolderError(f"{where}: not a samples manifest (format {MANIFEST_FORMAT!r} expected)")
    return body


def _folder_manifests(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(folder.glob(MANIFEST_GLOB)):
        try:
            body = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SampleFolderError(f"{path}: not a readable samples manifest ({exc})") from None
        found.append((str(path), _check_manifest(body, str(path))))
    return found


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB"):
                raise SampleFolderError(f"{path}: a {image.mode} image; sample PNGs are 8-bit gray (L) or RGB")
            pixels = np.asarray(image)
    except (OSError, SyntaxError) as exc:
        raise SampleFolderError(f"{path}: not a readable PNG ({exc})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _read_archive(path: Path) -> tuple[np.ndarray, list[int], dict[str, Any] | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"images", "seeds"} - set(data.files)
            if missing:
                raise SampleFolderError(f"{path}: a samples archive needs {sorted(missing)} (it has {data.files})")
            images, seeds = data["images"], data["seeds"]
            text = str(data["manifest"]) if "manifest" in data.files else None
    except (OSError, ValueError, EOFError) as exc:
        raise SampleFolderError(f"{path}: not a readable .npz samples archive ({exc})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise SampleFolderError(f"{path}: images must be (N, H, W, 1 or 3) uint8, got {images.shape} {images.dtype}")
    if seeds.shape != (len(images),) or seeds.dtype.kind not in "iu":
        raise SampleFolderError(f"{path}: seeds must be one integer per image, got {seeds.shape} {seeds.dtype}")
    body = None
    if text is not None:
        try:
            body = _check_manifest(json.loads(text), str(path))
        except json.JSONDecodeError as exc:
            raise SampleFolderError(f"{path}: its manifest is not JSON ({exc})") from None
    return images, [int(seed) for seed in seeds], body


def _identity(manifests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The identity every manifest shares, or an error naming two that disagree; None without manifests."""
    if not manifests:
        return None
    first_where, first = manifests[0]
    identity = {key: first.get(key) for key in IDENTITY_KEYS}
    for where, body in manifests[1:]:
        for key in IDENTITY_KEYS:
            if body.get(key) != identity[key]:
                raise SampleFolderError(
                    f"{where} and {first_where} disagree on {key} ({body.get(key)!r} vs {identity[key]!r}): "
                    "not samples of one model"
                )
    return identity


def read_sample_folders(sources: list[str], limit: int | None = None) -> SampleSet:
    """Every sample of the folders (`NNNNNNNN.png`) and `.npz` archives as one set; `limit`: the lowest seeds.

    Errors name the offending file: a seed in two places, images of different shapes, an unreadable PNG or
    archive, manifests of different models, samples outside every manifest's seed range. Files with other names
    in a folder (grids, notes) are ignored.
    """
    where: dict[int, str] = {}
    pixels: dict[int, Path | np.ndarray] = {}  # a PNG to read, or an archive's image
    manifests: list[tuple[str, dict[str, Any]]] = []
    for source in map(Path, sources):
        found: list[tuple[int, Any, Path | np.ndarray]]  # (seed, where it is, a PNG or an archive's image)
        if source.is_dir():
            found = [(int(m.group(1)), p, p) for p in source.iterdir() if (m := SAMPLE_NAME.match(p.name))]
            manifests += _folder_manifests(source)
        elif source.suffix == ".npz" and source.is_file():
            stored, stored_seeds, body = _read_archive(source)
            found = [(seed, f"{source} (seed {seed})", one) for seed, one in zip(stored_seeds, stored, strict=True)]
            manifests += [(str(source), body)] if body is not None else []
        else:
            raise SampleFolderError(f"--samples {source}: neither a folder nor a .npz samples archive")
        for seed, origin, item in found:
            if seed in where:
                raise SampleFolderError(f"seed {seed} is in two places: {where[seed]} and {origin}")
            where[seed], pixels[seed] = str(origin), item
    if not pixels:
        raise SampleFolderError(f"no samples (NNNNNNNN.png, as --save-samples writes) in {', '.join(sources)}")
    seeds = sorted(pixels)
    if limit is not None:
        if limit > len(seeds):
            raise SampleFolderError(f"--n {limit}: the sources hold only {len(seeds)} samples")
        seeds = seeds[:limit]
    identity = _identity(manifests)
    if identity is not None:
        ranges = [body["seeds"] for _, body in manifests]
        unrecorded = [seed for seed in seeds if not any(low <= seed <= high for low, high in ranges)]
        if unrecorded:
            raise SampleFolderError(
                f"{len(unrecorded)} samples (seed {unrecorded[0]}, ...) are not in any manifest's seed range: "
                "samples of unknown origin mixed with a model's"
            )
    arrays: list[np.ndarray] = []
    for seed in seeds:
        stored_item = pixels[seed]
        array = _read_png(stored_item) if isinstance(stored_item, Path) else stored_item
        if arrays and array.shape != arrays[0].shape:
            raise SampleFolderError(f"{where[seed]} is {array.shape}, the first sample is {arrays[0].shape}")
        arrays.append(array)
    images = uint8_to_float(np.stack(arrays), channels_last=True)
    if identity is not None and identity.get("image_shape") not in (None, list(images.shape[1:])):
        raise SampleFolderError(f"the images are {list(images.shape[1:])}, the manifests say {identity['image_shape']}")
    models = sorted({str(body.get("model")) for _, body in manifests})
    return SampleSet(images, seeds, identity, models)
