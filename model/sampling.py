"""The sampler contract: what every way of turning per-image seeds into images promises.

A `Sampler` (DDGAN on any backend, the DDPM baseline) takes a list of per-image seeds and, optionally, the
denoising steps of each image, and returns images in [-1, 1]. Image i depends on `seeds[i]` (and its steps)
alone. `SamplerInfo` says what a sampler is; it is fixed when the sampler is built (`ddgan.model.sampler.
open_sampler`), never changed afterwards. Step counts are validated here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
from torch import Tensor

from ddgan.model.config import DTYPE_NAMES

SamplerKind = Literal["ddgan", "ddpm"]
# The dtypes a sampler can be asked for, by the names used in the CLI, the registry, the API and metrics.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}

# progress(done, total): denoising iterations of the current `sample` call. A hook may raise
# `SamplingStoppedError` to abandon the call at that point (nobody waits for the result any more).
Progress = Callable[[int, int], None]


class SamplerError(ValueError):
    """A sampler cannot be built as asked, or a call asks for something it cannot do (one line for users)."""


class WeightsNotFoundError(SamplerError):
    """The model directory or its weights are not on disk: installing them is the fix."""


class StepsError(SamplerError):
    """A requested step count is outside what this sampler runs."""


class SamplingStoppedError(Exception):
    """Raised by a progress hook to stop a `sample` call between two denoising iterations."""


def forward_passes(rows: int, micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> list[int]:
    """The padded row count of each forward pass of a call of `rows` images: full `micro_batch` passes, then the
    last one padded to the smallest of `remainder_sizes` that holds it, else to `micro_batch` (None: one pass)."""
    if rows <= 0:
        return []
    if micro_batch is None:
        return [rows]
    full, rest = divmod(rows, micro_batch)
    last = [min((size for size in remainder_sizes if size >= rest), default=micro_batch)] if rest else []
    return [micro_batch] * full + last


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler is: enough to label its images, metrics and cache keys."""

    kind: SamplerKind
    dataset: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    default_steps: int
    min_steps: int
    max_steps: int
    backend: str
    device: str
    dtype: str  # a key of TORCH_DTYPES: the precision the network computes in
    micro_batch: int | None  # every forward pass runs exactly this many rows (None: the whole call at once)
    random_weights: bool
    weights_digest: str  # sha256 of the weights: with backend, dtype and device type it fixes every image
    # Smaller pass sizes whose rows were verified bit-identical to a `micro_batch` pass (warm-up checks them):
    # a call's last pass pads only up to the smallest of these that holds its rows.
    remainder_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.default_steps <= self.max_steps:
            raise SamplerError(
                f"steps must satisfy 1 <= min ({self.min_steps}) <= default ({self.default_steps}) "
                f"<= max ({self.max_steps})"
            )
        if self.micro_batch is not None and self.micro_batch < 1:
            raise SamplerError(f"micro_batch must be >= 1, got {self.micro_batch}")
        if self.remainder_sizes and (
            self.micro_batch is None or not all(0 < size < self.micro_batch for size in self.remainder_sizes)
        ):
            raise SamplerError(
                f"remainder_sizes {self.remainder_sizes} must lie in 1..micro_batch-1 (micro_batch={self.micro_batch})"
            )

    def with_micro_batch(self, micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> SamplerInfo:
        return replace(self, micro_batch=micro_batch, remainder_sizes=tuple(sorted(set(remainder_sizes))))

    def forward_passes(self, rows: int) -> list[int]:
        """The padded row count of each forward pass of a call of `rows` images (see `forward_passes`)."""
        return forward_passes(rows, self.micro_batch, self.remainder_sizes)

    @property
    def fixed_steps(self) -> bool:
        """True for a sampler that always runs the same number of steps (a DDGAN runs its trained T)."""
        return self.min_steps == self.max_steps

    def check_steps(self, steps: int | None) -> int:
        """The steps one image runs: None is the default; anything outside [min, max] is a `StepsError`."""
        if steps is None:
            return self.default_steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise StepsError(f"steps must be an integer, got {steps!r}")
        if self.fixed_steps and steps != self.default_steps:
            raise StepsError(f"this {self.kind} model always runs its {self.default_steps} steps, not {steps}")
        if not self.min_steps <= steps <= self.max_steps:
            raise StepsError(f"steps must be in {self.min_steps}..{self.max_steps}, got {steps}")
        return steps

    def steps_per_image(self, steps: int | Sequence[int] | None, count: int) -> list[int]:
        """Validated steps for each of `count` images (one value for all, or one per image)."""
        if count < 1:
            raise SamplerError("need at least one seed")
        if steps is None or isinstance(steps, int):
            return [self.check_steps(steps)] * count
        values = [self.check_steps(s) for s in steps]
        if len(values) != count:
            raise StepsError(f"got {len(values)} step counts for {count} seeds")
        return values


class Sampler(Protocol):
    """Seeds in, images out; see the module docstring for the guarantees."""

    @property
    def info(self) -> SamplerInfo: ...

    def sample(
        self, seeds: Sequence[int], steps: int | Sequence[int] | None = None, progress: Progress | None = None
    ) -> Tensor:
        """Images (B, C, H, W) float32 on the CPU in [-1, 1]; image i depends on seeds[i] and its steps alone."""
        ...

    def with_micro_batch(self, micro_batch: int | None, remainder_sizes: Sequence[int] = ()) -> Sampler:
        """A new sampler on the same loaded network and backend whose forward passes run `micro_batch` rows (a
        call's last pass: the smallest of `remainder_sizes` that holds it, when those were verified to agree)."""
        ...
