"""Multi-process training under `torchrun`: process group setup and gradient averaging.

Gradients are averaged with one flattened all-reduce per network after `backward()` (StyleGAN2-ADA's scheme)
instead of wrapping the networks in `DistributedDataParallel`: R1 needs a double backward through D, which DDP's
reducer does not support, and the explicit form keeps G's D-step forward pass out of the synchronisation. The
result is the same as DDP: every rank applies the mean gradient to identical weights, so ranks stay identical.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_request: str = "auto") -> DistContext:
    """Read torchrun's environment; NCCL on CUDA, gloo on CPU. Without torchrun: one process, no group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_request == "cuda" or (device_request == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        logger.info("rank %d/%d on %s (%s)", rank, world_size, device, dist.get_backend())
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: nn.Module, ctx: DistContext) -> None:
    """Start every rank from rank 0's weights and buffers."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: nn.Module, ctx: DistContext) -> None:
    """All-reduce the mean gradient of every parameter (missing gradients count as zeros)."""
    if not ctx.enabled:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        count = p.numel()
        p.grad = g.copy_(flat[offset : offset + count].view_as(p))
        offset += count


def any_rank(flags: Sequence[bool], ctx: DistContext) -> list[bool]:
    """Each flag, true on every rank when it is true on some rank (a signal or a time limit stops all ranks
    together); one all-reduce for all of them."""
    if not ctx.enabled:
        return list(flags)
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=ctx.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [value > 0 for value in values.tolist()]


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Average logged scalars over ranks (one all-reduce)."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if ctx.enabled:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return {k: float(v) for k, v in zip(keys, stacked.tolist(), strict=True)}
