"""The backend contract of the DDGAN sampler: a backend turns a model into a `RunChain`.

A `RunChain` runs the whole T-step posterior-sampling chain (ddgan-spec §4) on explicit noise:
`run_chain(x_T, z, noise) -> x_0`, inputs float32 on the sampler's device (x_T (B,C,H,W), z (T,B,nz),
noise (T,B,C,H,W)), output any float dtype. Each backend casts to the precision it computes in, so every
backend receives the same numbers for a seed. Backends are described by a `BackendSpec` and registered into
the factory (`ddgan.model.sampler.register_backend`): the torch ones by `model`, the exporters' by `export`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddgan.model.config import ModelConfig
from ddgan.model.ncsnpp import NCSNpp

RunChain = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ChainRequest:
    """Everything a backend may need to build a chain for one model on one device."""

    config: ModelConfig
    device: torch.device
    dtype: torch.dtype
    options: Mapping[str, Any]
    model_dir: Path | None  # None for random weights built from a preset
    random_weights: bool
    load_generator: Callable[[], NCSNpp]  # the trained (or random) generator on the CPU, in eval mode


@dataclass(frozen=True)
class BackendSpec:
    """A named way of running the chain."""

    name: str
    build: Callable[[ChainRequest], RunChain]
    description: str
    dtypes: tuple[str, ...] = ("float32",)  # names of ddgan.model.sampling.TORCH_DTYPES it computes in
    options: tuple[str, ...] = ()  # keyword options it accepts (registry `backend_options`)
    random_weights: bool = False  # can it run an untrained generator (no exported artefact needed)?
    # device -> None when it can run there, else the reason it cannot (a missing package, no CUDA ...)
    unavailable: Callable[[torch.device], str | None] = field(default=lambda device: None)


class CastingChain(torch.nn.Module):
    """A torch chain fed float32 inputs: casts them to the module's dtype (the RunChain input contract)."""

    def __init__(self, chain: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.chain = chain
        self.dtype = dtype

    def forward(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        return self.chain(x_T.to(self.dtype), z.to(self.dtype), noise.to(self.dtype))
