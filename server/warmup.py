"""Warm-up: each batch size once before a model serves, and the choice of a batch-invariant model's micro-batch.

A batch-invariant model runs every forward pass at one fixed size (only the last pass of a batch is padded),
so an image is bit-identical alone or in any batch. Padding to `max_batch_images` made a one-image request pay
for a full batch. Warm-up times the candidate sizes on the unpadded sampler and compares their rows: every
smaller size whose images are bit-identical to a larger size's (on the same seeds) can serve as that size's
`remainder_size`, and a call's last pass pads only up to the smallest of those that holds it. Which sizes agree
is a property of the kernels on this device and thread count (measured, never assumed).

The choice: when every smaller timed size agrees with the fastest size per image, that size serves (a small
request still pays only its own pass); otherwise the smallest size whose images/s is within
`MICRO_BATCH_TOLERANCE` of the best, which a small request pays in full. Once two sizes in a row are slower per
image than that tolerance below the best so far, the larger (and longer) sizes are not timed: on a CPU a
256x256 model ran one image at a time fastest, and timing 2..16 images as well kept `--random-weights` from
being ready for minutes (one slow size alone is not enough: a noisy timing of 16 once hid a faster 32).
The choice is a measurement: two processes may pick different sizes, and images agree bit for bit only at one
size, so the size is reported (/v1/models, the log) and a registry `micro_batch = N` pins it across replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddgan.model.sampler import Progress, Sampler
from ddgan.server.registry import ModelEntry

MICRO_BATCH_TOLERANCE = 0.10  # "as fast per image" = within 10% of the best measured images/s
# A candidate runs until it has taken this long (at most MAX_RUNS calls; its fastest call counts): one short
# call on a shared machine is mostly noise, one long call is not.
MIN_TIMED_S = 0.25
MAX_RUNS = 3
WARMUP_STEPS = 2  # enough to compile/allocate every kernel a many-step loop uses


@dataclass(frozen=True)
class WarmedUp:
    sampler: Sampler  # what serves: with its micro-batch when the entry is batch-invariant
    seconds: dict[int, float]  # batch size -> seconds of its fastest call
    micro_batch_choice: str | None  # how the micro-batch was chosen (None: not batch-invariant)
    steps: int = 0  # denoising steps of each timed call

    @property
    def throughput_sample(self) -> tuple[float, float] | None:
        """(work = images x steps, seconds) of the call that best predicts serving speed: the micro-batch's,
        else the largest batch's; None when nothing was timed."""
        if not self.seconds:
            return None
        size = self.sampler.info.micro_batch if self.sampler.info.micro_batch in self.seconds else max(self.seconds)
        return size * self.steps, self.seconds[size]


def pick_micro_batch(seconds: Mapping[int, float], tolerance: float = MICRO_BATCH_TOLERANCE) -> int:
    """The smallest batch size whose images/s is at least (1 - tolerance) x the best measured images/s."""
    if not seconds:
        raise ValueError("no batch size was measured")
    rates = {size: size / max(elapsed, 1e-9) for size, elapsed in seconds.items()}
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= (1 - tolerance) * best)


def choose_micro_batch(
    seconds: Mapping[int, float], agreeing: Callable[[int], list[int]]
) -> tuple[int, list[int], str]:
    """(micro-batch, its remainder sizes, how it was chosen) from the timed sizes; `agreeing(size)` lists the
    smaller sizes whose rows are bit-identical to that size's."""
    rates = {size: size / max(elapsed, 1e-9) for size, elapsed in seconds.items()}
    fastest = max(rates, key=lambda size: (rates[size], size))
    remainders = agreeing(fastest)
    if remainders == sorted(size for size in seconds if size < fastest):
        return fastest, remainders, f"measured: the fastest per image of {list(seconds)}, every smaller size agreeing"
    chosen = pick_micro_batch(seconds)
    how = f"measured: the smallest of {list(seconds)} within {MICRO_BATCH_TOLERANCE:.0%} of the best images/s"
    return chosen, agreeing(chosen), how


def time_batch(sampler: Sampler, size: int, steps: int, progress: Progress | None = None) -> tuple[float, Tensor]:
    """Seconds of the fastest of up to MAX_RUNS calls at `size` images (fewer once MIN_TIMED_S is spent), and
    the images of seeds 0..size-1."""
    fastest, spent, images = float("inf"), 0.0, None
    for _ in range(MAX_RUNS):
        started = time.perf_counter()
        images = sampler.sample(list(range(size)), steps=steps, progress=progress)
        elapsed = time.perf_counter() - started
        fastest, spent = min(fastest, elapsed), spent + elapsed
        if spent >= MIN_TIMED_S:
            break
    assert images is not None
    return fastest, images


def agreeing_sizes(images: Mapping[int, Tensor], reference: int) -> list[int]:
    """The sizes below `reference` whose images equal, bit for bit, the first rows of the reference size's."""
    expected = images[reference]
    return sorted(
        size for size, rows in images.items() if size < reference and torch.equal(rows, expected[: rows.shape[0]])
    )


def _time_sizes(
    raw: Sampler, sizes: Sequence[int], steps: int, progress: Progress | None, stop_when_slower: bool
) -> dict[int, tuple[float, Tensor]]:
    """`time_batch` of each size, smallest first; with `stop_when_slower`, none after the second size in a row
    whose images/s is below (1 - MICRO_BATCH_TOLERANCE) x the best so far. Without it every size runs: a model
    serves each of them and warms them all."""
    timed: dict[int, tuple[float, Tensor]] = {}
    best, slower_in_a_row = 0.0, 0
    for size in sorted(sizes):
        elapsed, rows = time_batch(raw, size, steps, progress)
        timed[size] = (elapsed, rows)
        rate = size / max(elapsed, 1e-9)
        slower_in_a_row = slower_in_a_row + 1 if rate < (1 - MICRO_BATCH_TOLERANCE) * best else 0
        if stop_when_slower and slower_in_a_row == 2:
            break
        best = max(best, rate)
    return timed


def warm_up(entry: ModelEntry, sampler: Sampler, progress: Progress | None = None) -> WarmedUp:
    """Run the entry's batch sizes (first-call allocation, autotuning); measure the micro-batch when asked to.
    `progress` is every call's hook: it may raise `SamplingStoppedError` to abandon the warm-up (shutdown)."""
    info = sampler.info
    steps = max(info.min_steps, min(WARMUP_STEPS, info.default_steps))
    # a batch-invariant entry times every size at its own shape (its speed, and its bits), not padded
    raw = sampler if info.micro_batch is None or not entry.batch_invariant else sampler.with_micro_batch(None)
    raw.sample([0], steps=steps, progress=progress)  # the cold call: lazy initialisation, allocator growth
    measuring = entry.batch_invariant and info.micro_batch is None
    timed = _time_sizes(raw, entry.batch_sizes, steps, progress, stop_when_slower=measuring)
    seconds = {size: elapsed for size, (elapsed, _) in timed.items()}
    if not entry.batch_invariant:
        return WarmedUp(sampler, seconds, None, steps)
    images = {size: rows for size, (_, rows) in timed.items()}

    def agreeing(size: int) -> list[int]:
        return agreeing_sizes(images, size) if size in images else []

    if info.micro_batch is None:
        chosen, remainders, how = choose_micro_batch(seconds, agreeing)
    else:
        chosen, how = info.micro_batch, "registry"
        remainders = agreeing(chosen)
    choice = f"{how}; last passes of {remainders or 'no smaller size'} (bit-identical rows)"
    return WarmedUp(sampler.with_micro_batch(chosen, remainders), seconds, choice, steps)


def without_warm_up(entry: ModelEntry, sampler: Sampler) -> WarmedUp:
    """Warm-up is off: nothing measured, so a batch-invariant model without a registry size pads to the full batch."""
    if entry.measures_micro_batch and sampler.info.micro_batch is None:
        return WarmedUp(sampler.with_micro_batch(entry.max_batch_images), {}, "max_batch_images (warm-up off)")
    return WarmedUp(sampler, {}, "registry" if sampler.info.micro_batch is not None else None)
