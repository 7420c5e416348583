"""CPU formulations of NCSN++ ops for torch.compile (inductor), where the eager ones fuse badly.

Each equals its eager op in `model.ncsnpp` to rounding and is only taken inside a compiled graph on the CPU
(`compiled_on_cpu`); the custom ops are opaque to inductor on purpose. Measured on the bf16 cifar10 chain at batch 16 on
an AMX Xeon (docs/benchmarks.md): together with weights actually frozen, 1176 ms -> 705 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GN_EPS = 1e-6


def compiled_on_cpu(x: Tensor) -> bool:
    """x is a CPU tensor inside torch.compile (inductor) for inference, not an export: where these pay off.

    Inference only: the custom ops have no autograd formula.
    """
    compiling = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
    return compiling and not torch.is_grad_enabled() and x.device.type == "cpu"


def channels_last_group_norm(x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """GroupNorm of a channels_last x for inductor, without leaving channels_last.

    Per-channel mean and variance over the pixels (a reduction whose innermost, contiguous dimension is the
    channel), then each group's by the law of total variance over its equally sized channels: the same
    statistics as `F.group_norm`, and inductor fuses the normalisation with what follows in one NHWC pass.
    """
    n, c = x.shape[:2]
    xf = x.float()
    var_c, mean_c = torch.var_mean(xf, dim=(2, 3), correction=0, keepdim=True)  # (n, c, 1, 1)
    mean_gc = mean_c.view(n, num_groups, -1)
    mean_g = mean_gc.mean(dim=2, keepdim=True)
    var_g = (var_c.view(n, num_groups, -1) + (mean_gc - mean_g) ** 2).mean(dim=2, keepdim=True)
    scale = torch.rsqrt(var_g + GN_EPS).expand(n, num_groups, c // num_groups).reshape(n, c, 1, 1)
    shift = -mean_g.expand(n, num_groups, c // num_groups).reshape(n, c, 1, 1) * scale
    if weight is not None:
        gamma = weight.float().view(1, c, 1, 1)
        scale, shift = scale * gamma, shift * gamma
    if bias is not None:
        shift = shift + bias.float().view(1, c, 1, 1)
    return (xf * materialised(scale) + materialised(shift)).to(x.dtype)


@torch.library.custom_op("ddgan::materialised", mutates_args=())
def materialised(t: Tensor) -> Tensor:
    """A copy of t that inductor computes once into a buffer instead of inlining it into every consumer.

    Inductor inlines the per-channel GroupNorm scale and shift into the per-pixel kernel that applies them, where
    each channel's group statistics are then gathered again at every pixel (7x slower on the bf16 cifar10 chain's
    32x32 GroupNorms); an opaque op makes it keep the (B, C) tensors.
    """
    return t.clone()


@materialised.register_fake
def _(t: Tensor) -> Tensor:
    return torch.empty_like(t)


# The FIR kernel whose 2x upsampling (zero insertion, blur, gain 4) is bilinear interpolation: each output pixel is
# 3/4 of its nearest input pixel and 1/4 of the next one, per axis (align_corners=False), with zero padding.
BILINEAR_TAPS = (1, 3, 3, 1)


@torch.library.custom_op("ddgan::bilinear_fir_upsample", mutates_args=())
def bilinear_fir_upsample(x: Tensor) -> Tensor:
    """`fir_upsample` with `BILINEAR_TAPS`, as ATen's bilinear kernel with its border rows and columns scaled.

    An opaque op for inductor: its own CPU code for a depthwise transposed convolution (4.4 ms per 256-channel
    16x16 bf16 call at batch 16) or for bilinear interpolation (51 ms) is slower than ATen's channels_last
    bilinear kernel (1.6 ms), which accumulates in float32 and rounds once (border pixels of a bf16 x twice).
    """
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False).contiguous(memory_format=_layout_of(x))
    # Bilinear clamps at the border where the FIR reads zero padding: there the FIR output is 3/4 of it per axis.
    for edge in (up[..., 0, :], up[..., -1, :], up[..., :, 0], up[..., :, -1]):
        edge.mul_(0.75)
    return up


@bilinear_fir_upsample.register_fake
def _(x: Tensor) -> Tensor:
    shape = (x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    return x.new_empty(shape).contiguous(memory_format=_layout_of(x))


def _layout_of(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
