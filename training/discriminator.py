"""Time-conditioned discriminators for DDGAN and SIDDM, written from the description in ddgan-spec §5.

DDGAN's discriminator judges a denoising *pair*: D(x_t, t, x_{t+1}) concatenates (x_t, x_{t+1}) on channels.
SIDDM's judges the *marginal*: D(x_t, t) (``conditional=False``) and carries a dense decoder with two extra
output maps that share the trunk (siddm-notes §1.3): the denoising regulariser r(x_t, t) ≈ x_0 and the AFD
conditional estimator c(x_t, t) ≈ x_{t+1}.

Widths follow the official small / large layouts scaled by ``ngf`` (official ngf = 64): ``small`` keeps the
input resolution in the first block and then halves three times (32 → 4), ``large`` halves from the first block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddgan.model.ncsnpp import conv2d, dense, fir_downsample, fir_kernel_2d, fir_upsample, timestep_embedding
from ddgan.training.train_config import DiscriminatorConfig

_FIR_TAPS = (1, 3, 3, 1)


class TimestepEmbedding(nn.Module):
    """sinusoidal(t) → dense → LeakyReLU → dense; the caller applies the outer LeakyReLU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.hidden = dense(dim, dim)
        self.out = dense(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.out(F.leaky_relu(self.hidden(timestep_embedding(t, self.dim)), 0.2))


class DownConvBlock(nn.Module):
    """act → conv3x3 (+ dense(t_emb)) → act → [FIR ↓] → conv3x3 (zero init); skip 1x1; sum / √2."""

    fir_in: Tensor
    fir_out: Tensor

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = conv2d(in_ch, out_ch, 3)
        self.dense_t1 = dense(t_emb_dim, out_ch)
        self.conv2 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        self.skip = conv2d(in_ch, out_ch, 1, bias=False)
        if downsample:
            self.register_buffer("fir_in", fir_kernel_2d(_FIR_TAPS, in_ch), persistent=False)
            self.register_buffer("fir_out", fir_kernel_2d(_FIR_TAPS, out_ch), persistent=False)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        out = self.conv1(F.leaky_relu(x, 0.2)) + self.dense_t1(t_emb)[:, :, None, None]
        out = F.leaky_relu(out, 0.2)
        if self.downsample:
            out, x = fir_downsample(out, self.fir_out), fir_downsample(x, self.fir_in)
        return (self.conv2(out) + self.skip(x)) / math.sqrt(2.0)


class UpConvBlock(nn.Module):
    """Decoder block of the SIDDM dense heads: FIR ↑, concat the encoder skip, two time-conditioned convs."""

    fir: Tensor

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, t_emb_dim: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = conv2d(in_ch + skip_ch, out_ch, 3)
        self.dense_t1 = dense(t_emb_dim, out_ch)
        self.conv2 = conv2d(out_ch, out_ch, 3)
        if upsample:
            self.register_buffer("fir", fir_kernel_2d(_FIR_TAPS, in_ch), persistent=False)

    def forward(self, x: Tensor, skip: Tensor, t_emb: Tensor) -> Tensor:
        if self.upsample:
            x = fir_upsample(x, self.fir)
        h = self.conv1(F.leaky_relu(torch.cat([x, skip], dim=1), 0.2)) + self.dense_t1(t_emb)[:, :, None, None]
        return self.conv2(F.leaky_relu(h, 0.2))


def minibatch_stddev(x: Tensor, group_size: int = 4) -> Tensor:
    """Append one feature map: the std over groups of samples, averaged over channels and pixels (StyleGAN)."""
    batch, channels, height, width = x.shape
    group = min(batch, group_size)
    while batch % group:
        group -= 1
    y = x.float().view(group, -1, channels, height, width)
    std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # (B / group,)
    std_map = std.to(x.dtype).view(-1, 1, 1, 1).repeat(group, 1, height, width)
    return torch.cat([x, std_map], dim=1)


class DiscriminatorOutput(tuple):
    """(logit (B,), x_0 estimate or None, x_{t+1} estimate or None)."""

    logit: Tensor
    x_0: Tensor | None
    x_t_plus_one: Tensor | None

    def __new__(cls, logit: Tensor, x_0: Tensor | None = None, x_t_plus_one: Tensor | None = None):
        obj = super().__new__(cls, (logit, x_0, x_t_plus_one))
        obj.logit, obj.x_0, obj.x_t_plus_one = logit, x_0, x_t_plus_one
        return obj


class Discriminator(nn.Module):
    """D(x_t, t[, x_{t+1}]) → logit (B,) and, with ``dense_heads``, the SIDDM decoder maps."""

    def __init__(self, config: DiscriminatorConfig, image_channels: int) -> None:
        super().__init__()
        self.config = config
        self.conditional = config.conditional  # what the objectives ask of any discriminator (training.losses)
        self.image_channels = image_channels
        in_ch = image_channels * (2 if config.conditional else 1)
        self.t_embed = TimestepEmbedding(config.t_emb_dim)
        plan = config.channel_plan()
        self.start_conv = conv2d(in_ch, plan[0][0], 1)
        self.blocks = nn.ModuleList(DownConvBlock(i, o, config.t_emb_dim, down) for i, o, down in plan)
        top = plan[-1][1]
        self.final_conv = conv2d(top + 1, top, 3)
        self.end_linear = dense(top, 1)
        if config.dense_heads:
            ups: list[nn.Module] = []
            ch = top
            for block_in, _, down in reversed(plan):
                ups.append(UpConvBlock(ch, block_in, block_in, config.t_emb_dim, upsample=down))
                ch = block_in
            self.decoder = nn.ModuleList(ups)
            self.dense_out = conv2d(ch, 2 * image_channels, 3)

    def forward(self, x_t: Tensor, t: Tensor, x_t_plus_one: Tensor | None = None) -> DiscriminatorOutput:
        if self.conditional:
            if x_t_plus_one is None:
                raise ValueError("a conditional discriminator needs x_{t+1}")
            x_t = torch.cat([x_t, x_t_plus_one], dim=1)
        t_emb = F.leaky_relu(self.t_embed(t), 0.2)
        h = self.start_conv(x_t)
        skips = []
        for block in self.blocks:
            skips.append(h)  # the decoder's skip for this block: its input resolution
            h = block(h, t_emb)
        logit_features = F.leaky_relu(self.final_conv(minibatch_stddev(h)), 0.2)
        logit = self.end_linear(logit_features.sum(dim=(2, 3))).squeeze(1)
        if not self.config.dense_heads:
            return DiscriminatorOutput(logit)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            h = block(h, skip, t_emb)
        maps = self.dense_out(F.leaky_relu(h, 0.2))
        x_0, x_next = maps.split(self.image_channels, dim=1)
        return DiscriminatorOutput(logit, x_0, x_next)
