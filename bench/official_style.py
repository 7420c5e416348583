"""Reference-style NCSN++ forward pass: the yardstick `ddgan bench sampler` measures `model.ncsnpp` against.

Written from the facts in ddgan-spec §2.3 and §3, not from the official code. It computes the same function as
`model.ncsnpp.NCSNpp` on the same parameters, the way the official implementation runs on a CPU:

- FIR resampling through an `upfirdn2d_native`-style routine: every channel reshaped into its own
  single-channel image, zero insertion for upsampling, padding, a true (flipped-kernel) convolution at full
  resolution, then strided subsampling (so downsampling computes four times the outputs it keeps);
- AdaGN as a non-affine GroupNorm followed by separate scale and shift;
- attention as einsums over an explicit (HW x HW) weight tensor, with each NIN as a permute + einsum;
- NCHW activations throughout, `act(temb)` recomputed in every residual block, no in-place updates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddgan.model.ncsnpp import (
    NIN,
    AdaptiveGroupNorm,
    AttnBlock,
    NCSNpp,
    PyramidDownsample,
    ResnetBlockBigGAN,
    timestep_embedding,
)

_GN_EPS = 1e-6


def fir_kernel(taps: tuple[int, ...]) -> Tensor:
    """K = outer(k, k) / sum(outer(k, k))."""
    k = torch.tensor(taps, dtype=torch.float32)
    kernel = torch.outer(k, k)
    return kernel / kernel.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, convolve with `kernel` (a true convolution), keep every `down`-th pixel."""
    if min(pad) < 0:
        raise ValueError("only non-negative padding is used by the generator")
    batch, channels, height, width = x.shape
    out = x.reshape(batch * channels, 1, height, width)  # each channel is filtered as its own image
    if up > 1:
        out = F.pad(out[:, :, :, None, :, None], (0, up - 1, 0, 0, 0, up - 1))
        out = out.reshape(batch * channels, 1, height * up, width * up)
    out = F.pad(out, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1))[None, None].to(out)
    out = F.conv2d(out, weight)[:, :, ::down, ::down]
    return out.reshape(batch, channels, out.shape[-2], out.shape[-1])


def upsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR upsampling with gain factor² so the kernel keeps the image's mean (spec §2.3 `upsample_2d`)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def conv_downsample_2d(x: Tensor, weight: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """FIR blur then a strided convolution with `weight` (spec §2.3 `conv_downsample_2d`)."""
    p = (kernel.shape[0] - factor) + (weight.shape[-1] - 1)
    blurred = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(blurred, weight, stride=factor)


def nin(layer: NIN, x: Tensor) -> Tensor:
    """Per-pixel linear layer: y_BHWC = x_BHWC @ W + b."""
    y = torch.einsum("bhwc,co->bhwo", x.permute(0, 2, 3, 1), layer.W) + layer.b
    return y.permute(0, 3, 1, 2)


def adaptive_group_norm(norm: AdaptiveGroupNorm, x: Tensor, z_emb: Tensor) -> Tensor:
    style = norm.style(z_emb).unsqueeze(2).unsqueeze(3)
    gamma, beta = style.chunk(2, dim=1)
    return gamma * F.group_norm(x, norm.num_groups, eps=_GN_EPS) + beta


def resnet_block(block: ResnetBlockBigGAN, x: Tensor, temb: Tensor, z_emb: Tensor, kernel: Tensor) -> Tensor:
    h = F.silu(adaptive_group_norm(block.GroupNorm_0, x, z_emb))
    if block.up:
        h, x = upsample_2d(h, kernel), upsample_2d(x, kernel)
    elif block.down:
        h, x = downsample_2d(h, kernel), downsample_2d(x, kernel)
    h = block.Conv_0(h)
    h = h + block.Dense_0(F.silu(temb))[:, :, None, None]
    h = block.Conv_1(block.Dropout_0(F.silu(adaptive_group_norm(block.GroupNorm_1, h, z_emb))))
    if hasattr(block, "Conv_2"):
        x = block.Conv_2(x)
    return (x + h) / math.sqrt(2.0) if block.skip_rescale else x + h


def attention_block(block: AttnBlock, x: Tensor) -> Tensor:
    batch, channels, height, width = x.shape
    h = block.GroupNorm_0(x)
    q, k, v = nin(block.NIN_0, h), nin(block.NIN_1, h), nin(block.NIN_2, h)
    w = torch.einsum("bchw,bcij->bhwij", q, k) * channels**-0.5
    w = torch.softmax(w.reshape(batch, height, width, height * width), dim=-1)
    w = w.reshape(batch, height, width, height, width)
    h = nin(block.NIN_3, torch.einsum("bhwij,bcij->bchw", w, v))
    return (x + h) / math.sqrt(2.0) if block.skip_rescale else x + h


def pyramid_downsample(module: PyramidDownsample, x: Tensor, kernel: Tensor) -> Tensor:
    return conv_downsample_2d(x, module.Conv2d_0.weight, kernel) + module.Conv2d_0.bias[None, :, None, None]


class OfficialStyleGenerator(nn.Module):
    """Runs a `NCSNpp`'s parameters through the reference-style forward pass (spec §2.3, steps 1-9)."""

    def __init__(self, generator: NCSNpp) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        g = self.generator
        cfg = g.config
        modules: Iterator[Any] = iter(g.all_modules)  # the official module order; each one's kind is known here
        kernel = fir_kernel(cfg.fir_kernel).to(x)
        levels = len(cfg.ch_mult)

        z_emb = g.z_transform(z)
        temb = next(modules)(timestep_embedding(t, cfg.num_channels_dae))
        temb = next(modules)(F.silu(temb))

        input_pyramid = x
        hs = [next(modules)(x)]
        for level in range(levels):
            for _ in range(cfg.num_res_blocks):
                h = resnet_block(next(modules), hs[-1], temb, z_emb, kernel)
                if h.shape[-1] in cfg.attn_resolutions:
                    h = attention_block(next(modules), h)
                hs.append(h)
            if level != levels - 1:
                h = resnet_block(next(modules), hs[-1], temb, z_emb, kernel)
                input_pyramid = pyramid_downsample(next(modules), input_pyramid, kernel)
                input_pyramid = (input_pyramid + h) / math.sqrt(2.0)
                h = input_pyramid
                hs.append(h)

        h = hs[-1]
        h = resnet_block(next(modules), h, temb, z_emb, kernel)
        h = attention_block(next(modules), h)
        h = resnet_block(next(modules), h, temb, z_emb, kernel)

        for level in reversed(range(levels)):
            for _ in range(cfg.num_res_blocks + 1):
                h = resnet_block(next(modules), torch.cat([h, hs.pop()], dim=1), temb, z_emb, kernel)
            if h.shape[-1] in cfg.attn_resolutions:
                h = attention_block(next(modules), h)
            if level != 0:
                h = resnet_block(next(modules), h, temb, z_emb, kernel)

        norm = next(modules)
        h = F.silu(F.group_norm(h, norm.num_groups, norm.weight, norm.bias, eps=norm.eps))
        h = next(modules)(h)
        return h if cfg.not_use_tanh else torch.tanh(h)
