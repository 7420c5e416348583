"""Turning a registry entry into a ready sampler, or into a precise reason why it cannot serve.

Every sampler comes from `ddgan.model.sampler.open_sampler` with the entry's settings as arguments (the
process-wide overrides of `DDGAN_DEVICE`, `DDGAN_BACKEND` and `DDGAN_RANDOM_WEIGHTS` applied). Missing weights
are `ModelNotInstalledError` (answered 404 with the install command); anything else that stops a model is
`ModelLoadError` (503, with the reason).
"""

from __future__ import annotations

from ddgan.model.sampler import (
    Sampler,
    SamplerError,
    WeightsNotFoundError,
    backends_of,
    model_installed,
    open_sampler,
)
from ddgan.server.registry import ModelEntry


class ModelUnavailableError(Exception):
    """A configured model cannot serve; `reason` is shown to clients and in /v1/models."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelNotInstalledError(ModelUnavailableError):
    """The weights are not on disk: the fix is the install command."""


class ModelLoadError(ModelUnavailableError):
    """Weights exist (or were not needed) but loading, the device or the backend failed."""


def not_installed_reason(entry: ModelEntry) -> str:
    return f"weights for {entry.name} are not installed at {entry.path}; install them with: {entry.install_hint()}"


def weights_present(entry: ModelEntry) -> bool:
    """A cheap look at the filesystem (no model imports): are this entry's weights there at all?"""
    return model_installed(entry.path)


def load_entry(
    entry: ModelEntry, *, random_weights: bool = False, device: str | None = None, backend: str | None = None
) -> Sampler:
    """The sampler of one registry entry; `device`/`backend` override the entry's (settings `DDGAN_DEVICE`, ...).

    A batch-invariant entry without `micro_batch` comes back without one: warm-up measures it
    (`server.warmup.warm_up`) and serves `sampler.with_micro_batch(chosen)`.

    The backend override applies to the kinds that have a choice of backends (the DDPM runs on torch only); an
    unknown name is the factory's error, not silently ignored.
    """
    choices = backends_of(entry.sampler)
    if backend is None or (len(choices) == 1 and backend not in choices):
        backend = entry.backend
    try:
        return open_sampler(
            entry.path,
            preset=entry.preset or entry.dataset,
            kind=entry.sampler,
            dataset=entry.dataset,
            backend=backend,
            device=device or entry.device,
            dtype=entry.dtype,
            # The registry's fixed forward size, if any; else warm-up measures one (server/warmup.py).
            micro_batch=entry.micro_batch,
            random_weights=random_weights,
            default_steps=entry.default_steps,
            max_steps=entry.max_steps,
            options=entry.backend_options,
        )
    except WeightsNotFoundError:
        raise ModelNotInstalledError(not_installed_reason(entry)) from None
    except SamplerError as exc:
        raise ModelLoadError(f"cannot load {entry.name}: {exc}") from None
