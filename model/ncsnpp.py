"""NCSN++ generator with AdaGN latent conditioning (DDGAN, Xiao et al. 2022), in plain PyTorch.

The generator maps (x_{t+1}, t, z) to x̂_0. Module construction order and attribute names fix the state_dict
keys, which equal the official released checkpoints' keys (ddgan-spec §2.4-2.5), so `netG_*.pth` files load
with `strict=True`. FIR resampling is expressed as depthwise convolutions (spec §2.3) and attention uses the
fused `scaled_dot_product_attention`; both are exact re-expressions of the reference maths and export to ONNX.
On CPU, activations of 16x16 and more run channels_last (`cpu_layout`); inside torch.compile a few ops take the
formulations of `model.compiled_ops`. `bench/official_style.py` is the
reference-style implementation that `ddgan bench sampler` measures this module against.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddgan.model.compiled_ops import (
    BILINEAR_TAPS,
    GN_EPS,
    bilinear_fir_upsample,
    channels_last_group_norm,
    compiled_on_cpu,
)
from ddgan.model.config import GeneratorConfig


def _num_groups(channels: int) -> int:
    return min(channels // 4, 32)


def group_norm(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """GroupNorm with statistics in float32 whatever the activation dtype (fp16/bf16 GroupNorm loses accuracy).

    On CPU the statistics of a channels_last x are taken in NCHW: the channels_last kernel splits its reductions
    over batch x pixels between threads, so an image's bits would depend on its batch size and slot; the NCHW
    kernel reduces each (image, group) alone. The result comes back in x's layout. Under torch.compile a
    channels_last x stays channels_last (`channels_last_group_norm`): the two layout copies were most of the
    fused kernels' time there, and a compiled chain's batch sizes are checked bit for bit at warm-up.
    """
    if compiled_on_cpu(x) and x.is_contiguous(memory_format=torch.channels_last):
        return channels_last_group_norm(x, num_groups, weight, bias)
    to_nchw = x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous()
    back_to_channels_last = to_nchw and x.is_contiguous(memory_format=torch.channels_last)
    # layout and dtype change in one copy each way
    source = x.to(torch.float32, memory_format=torch.contiguous_format) if to_nchw else x.float()
    if x.dtype != torch.float32:
        weight = None if weight is None else weight.float()
        bias = None if bias is None else bias.float()
    y = F.group_norm(source, num_groups, weight, bias, eps=GN_EPS)
    if back_to_channels_last:
        return y.to(x.dtype, memory_format=torch.channels_last)
    return y.to(x.dtype)


class FP32GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same parameters and state_dict keys) that normalises in float32."""

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias)


# ----------------------------------------------------------------------------------------------------------
# Initialisation (DDPM / score_sde "fan_avg uniform" variance scaling; scale 0 means ~1e-10 for zero-init).


def _variance_scaling_(weight: Tensor, scale: float = 1.0) -> None:
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same weights and names) that convolves every CPU batch with oneDNN.

    PyTorch sends a one-image (and, on one thread, a 1x1) convolution to its own im2col kernel and larger ones
    to oneDNN; the two round differently, so an image's bits would change with its batch size. Traced graphs
    (torch.compile, ONNX) keep the plain op.
    """

    def forward(self, x: Tensor) -> Tensor:
        # Inference only: the direct oneDNN op is outside autocast's cast list, and training needs no invariance.
        plain = x.device.type != "cpu" or x.dtype != self.weight.dtype or x.dtype not in (torch.float32, torch.bfloat16)
        plain = plain or isinstance(self.padding, str) or self.padding_mode != "zeros"
        if plain or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or _tracing():
            return super().forward(x)
        return torch.ops.aten.mkldnn_convolution(
            x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
        )


def conv2d(in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0, bias: bool = True) -> nn.Conv2d:
    conv = Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    _variance_scaling_(conv.weight, init_scale)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _bf16_on_cpu(x: Tensor) -> bool:
    """Whether `x` is a bf16 CPU activation: the ops whose bf16 CPU kernels are slow fallbacks compute in float32."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16


def rowwise_affine(x: Tensor, weight_t: Tensor, bias: Tensor) -> Tensor:
    """x (B, M, in) @ weight_t (in, out) + bias, as B independent products of one shape.

    One (B·M, in) GEMM is not batch-invariant: BLAS kernels block the rows, and a row in a remainder block
    is summed in another order (seen on an AMD EPYC Zen 3: 2e-7 apart by slot), so an image's bits would depend on its
    neighbours. A batched product runs every image through the same kernel, whatever B. An eager bf16 CPU product
    runs in float32: bf16 `baddbmm` copies the broadcast weight once per image (~1/5 of the bf16 cifar10 chain).
    """
    if compiled_on_cpu(x):
        if x.shape[1] == 1:  # a multiply-and-sum inductor fuses; each output is summed alone, whatever B
            return ((x.float().unsqueeze(-1) * weight_t.float()).sum(-2) + bias.float()).to(x.dtype)
        return torch.baddbmm(bias, x, weight_t.expand(x.shape[0], -1, -1))  # compiled, bf16 runs on AMX: 5x fp32
    if _bf16_on_cpu(x):
        wide = torch.baddbmm(bias.float(), x.float(), weight_t.float().expand(x.shape[0], -1, -1))
        return wide.to(x.dtype)
    return torch.baddbmm(bias, x, weight_t.expand(x.shape[0], -1, -1))


class Dense(nn.Linear):
    """`nn.Linear` (same weights and names) whose rows do not depend on their batch: see `rowwise_affine`."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            return super().forward(x)
        return rowwise_affine(x.unsqueeze(1), self.weight.t(), self.bias).squeeze(1)


def dense(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    linear = Dense(in_features, out_features)
    _variance_scaling_(linear.weight, init_scale)
    nn.init.zeros_(linear.bias)
    return linear


# ----------------------------------------------------------------------------------------------------------
# FIR resampling (StyleGAN2 kernel) as depthwise convolutions.


def fir_kernel_2d(taps: tuple[int, ...], channels: int) -> Tensor:
    """Depthwise FIR kernel K = outer(k, k) / sum, repeated per channel: shape (C, 1, k, k)."""
    k = torch.tensor(taps, dtype=torch.float32)
    kernel = torch.outer(k, k)
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, *kernel.shape).contiguous()


def fir_downsample(x: Tensor, kernel: Tensor) -> Tensor:
    """Blur then halve: conv2d(pad(x, 1), K, stride 2), one filter per channel."""
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel, stride=2, groups=x.shape[1])


def fir_upsample(x: Tensor, kernel: Tensor, bilinear: bool = False) -> Tensor:
    """Double then blur: conv_transpose2d(x, 4K, stride 2, padding 1), one filter per channel.

    A bf16 CPU input runs in float32: PyTorch has no oneDNN path for a bf16 depthwise transposed convolution, and
    its fallback took ~1/5 of the bf16 cifar10 chain (docs/benchmarks.md); the taps are exact in bf16 either way.
    `bilinear` (the kernel is `BILINEAR_TAPS`): under torch.compile on the CPU, `bilinear_fir_upsample`.
    """
    if bilinear and compiled_on_cpu(x):
        return bilinear_fir_upsample(x)
    if _bf16_on_cpu(x):
        up = F.conv_transpose2d(x.float(), kernel.float() * 4.0, stride=2, padding=1, groups=x.shape[1])
        return up.to(x.dtype)
    return F.conv_transpose2d(x, kernel * 4.0, stride=2, padding=1, groups=x.shape[1])


class PyramidDownsample(nn.Module):
    """Input-pyramid downsample: FIR blur then a strided 3x3 conv (`conv_downsample_2d(x, w) + b`)."""

    fir: Tensor  # non-persistent FIR kernel buffer

    def __init__(self, in_ch: int, out_ch: int, fir_taps: tuple[int, ...]) -> None:
        super().__init__()
        self.Conv2d_0 = _PlainConv(in_ch, out_ch)
        self.register_buffer("fir", fir_kernel_2d(fir_taps, in_ch), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(F.pad(x, (2, 2, 2, 2)), self.fir, groups=x.shape[1])
        return F.conv2d(x, self.Conv2d_0.weight, self.Conv2d_0.bias, stride=2)


class _PlainConv(nn.Module):
    """Holds `weight` (out, in, 3, 3) and `bias` (out) under the official parameter names."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        _variance_scaling_(self.weight)


# ----------------------------------------------------------------------------------------------------------
# Embeddings and normalisation.


# Elementwise CPU kernels run a tensor in vector chunks of up to 64 values and its tail (numel mod chunk) through
# scalar code whose exp/sin differ from the vector ones in the last bit, so in a (B, F) activation the rows that
# fall in the tail would change with the batch size and slot. Rows padded to a multiple of this never leave a tail.
_ROW_LANES = 64


def rowwise(op: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """op(x) for a (B, F) x, computed with every row in full vector chunks (see `_ROW_LANES`)."""
    pad = (-x.shape[-1]) % _ROW_LANES
    if x.dim() != 2 or pad == 0:
        return op(x)
    return op(F.pad(x, (0, pad)))[:, : x.shape[-1]]


class RowSiLU(nn.SiLU):
    """`nn.SiLU` (no parameters) whose (B, F) rows do not depend on their batch: see `rowwise`."""

    def forward(self, x: Tensor) -> Tensor:
        return rowwise(F.silu, x)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of the integer step index: [sin(t f_k), cos(t f_k)], f_k = 10000^(-k/(half-1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([rowwise(torch.sin, angles), rowwise(torch.cos, angles)], dim=1)


class PixelNorm(nn.Module):
    def forward(self, z: Tensor) -> Tensor:
        # sqrt and division round exactly in vector and scalar code alike (rsqrt need not): see `rowwise`
        return z / torch.sqrt(torch.mean(z * z, dim=1, keepdim=True) + 1e-8)


class AdaptiveGroupNorm(nn.Module):
    """AdaGN: gamma(z) * GroupNorm(x) + beta(z), the style from the mapped latent (gamma first)."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.num_groups = _num_groups(channels)
        self.style = dense(style_dim, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels] = 1.0
            self.style.bias[channels:] = 0.0

    def forward(self, x: Tensor, z_emb: Tensor) -> Tensor:
        # The modulation runs in the style layer's dtype: a float16 export keeps it float32 (gamma·norm + beta is
        # where float16 rounding of a trained generator's weights costs whole 8-bit grey levels; see
        # export.onnx_export), then hands the next layer x's dtype. With one dtype throughout, the casts are no-ops.
        style = self.style(z_emb.to(self.style.weight.dtype))
        gamma, beta = style[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(beta, gamma, group_norm(x.to(style.dtype), self.num_groups)).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Blocks.


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block with AdaGN, optional FIR up/down, residual sum scaled by 1/√2."""

    fir: Tensor  # non-persistent FIR kernel buffer

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        z_emb_dim: int,
        fir_taps: tuple[int, ...],
        up: bool = False,
        down: bool = False,
        dropout: float = 0.0,
        skip_rescale: bool = True,
    ) -> None:
        super().__init__()
        self.up, self.down, self.skip_rescale = up, down, skip_rescale
        self.GroupNorm_0 = AdaptiveGroupNorm(in_ch, z_emb_dim)
        self.Conv_0 = conv2d(in_ch, out_ch, 3)
        self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = AdaptiveGroupNorm(out_ch, z_emb_dim)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv2d(in_ch, out_ch, 1)
        if up or down:
            self.register_buffer("fir", fir_kernel_2d(fir_taps, in_ch), persistent=False)
        self.bilinear_up = up and tuple(fir_taps) == BILINEAR_TAPS

    def forward(self, x: Tensor, temb_act: Tensor, z_emb: Tensor) -> Tensor:
        h = F.silu(self.GroupNorm_0(x, z_emb), inplace=True)
        if self.up:
            h, x = fir_upsample(h, self.fir, self.bilinear_up), fir_upsample(x, self.fir, self.bilinear_up)
        elif self.down:
            h, x = fir_downsample(h, self.fir), fir_downsample(x, self.fir)
        # In-place updates of fresh conv/norm outputs save an allocation and a pass; none of them is an
        # activation that autograd saved, so training is unaffected.
        h = self.Conv_0(h).add_(self.Dense_0(temb_act)[:, :, None, None])
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h, z_emb), inplace=True)))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        h = h.add_(x)
        return h.mul_(1.0 / math.sqrt(2.0)) if self.skip_rescale else h


class NIN(nn.Module):
    """Per-pixel linear map with the official parameter layout: W (in, out), b (out)."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 1.0) -> None:
        super().__init__()
        weight = torch.empty(out_ch, in_ch)
        _variance_scaling_(weight, init_scale)
        self.W = nn.Parameter(weight.t().contiguous())
        self.b = nn.Parameter(torch.zeros(out_ch))


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions, scale C^-1/2, residual scaled by 1/√2."""

    def __init__(self, channels: int, skip_rescale: bool = True) -> None:
        super().__init__()
        self.skip_rescale = skip_rescale
        self.GroupNorm_0 = FP32GroupNorm(_num_groups(channels), channels, eps=GN_EPS)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=0.0)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.GroupNorm_0(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        w_qkv = torch.cat([self.NIN_0.W, self.NIN_1.W, self.NIN_2.W], dim=1)
        b_qkv = torch.cat([self.NIN_0.b, self.NIN_1.b, self.NIN_2.b])
        q, k, v = rowwise_affine(h, w_qkv, b_qkv).chunk(3, dim=2)
        # One head as a 4-D (B, 1, HW, C) call: the ONNX exporter only translates 4-D SDPA.
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        # A (B, H, W, C) view permuted keeps canonical channels_last strides even at B = 1 (a transpose+reshape
        # view gets a degenerate batch stride there, and the ops after it fall back to NCHW); the out-of-place
        # sum takes x's layout, so an NCHW caller gets NCHW back.
        h = rowwise_affine(h, self.NIN_3.W, self.NIN_3.b).view(b, height, width, c)
        h = x + h.permute(0, 3, 1, 2)
        return h.mul_(1.0 / math.sqrt(2.0)) if self.skip_rescale else h


# ----------------------------------------------------------------------------------------------------------
# The generator.

# On CPU, oneDNN convolves channels_last (NHWC) activations without reordering them, and the FIR depthwise convs
# and the attention's (B, HW, C) view get cheaper; at 8x8 and below NCHW is faster. The layout depends on the image
# size only, never on the batch: a batch-dependent layout changes which kernels run, hence an image's last bits
# with its batch size (server/warmup.py keeps every size whose bits agree). Measured with torch 2.13 / oneDNN 3.12,
# fp32, 2 threads, AMD EPYC Zen 4 (docs/benchmarks.md): 1.2x the old batch x pixels rule on mnist at batch 32.
_CHANNELS_LAST_MIN_PIXELS = 256


def cpu_layout(h: Tensor) -> Tensor:
    """h in the faster memory layout for its image size on CPU; unchanged on other devices and while exporting."""
    if h.device.type != "cpu" or not isinstance(h.shape[0], int):  # a symbolic batch: keep the graph layout-free
        return h
    large = h.shape[-2] * h.shape[-1] >= _CHANNELS_LAST_MIN_PIXELS
    return h.contiguous(memory_format=torch.channels_last if large else torch.contiguous_format)


class NCSNpp(nn.Module):
    """x̂_0 = G(x_{t+1}, t, z): the official `NCSNpp` generator (biggan blocks, residual input pyramid)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        nf, g = config.num_channels_dae, config
        if nf % 2:
            raise ValueError("num_channels_dae must be even (sinusoidal embedding)")
        temb_dim, levels = 4 * nf, len(g.ch_mult)
        resolutions = g.resolutions
        self.act = nn.SiLU()

        def block(i: int, o: int, up: bool = False, down: bool = False) -> ResnetBlockBigGAN:
            return ResnetBlockBigGAN(
                i, o, temb_dim, g.z_emb_dim, g.fir_kernel, up=up, down=down, dropout=g.dropout,
                skip_rescale=g.skip_rescale,
            )  # fmt: skip

        modules: list[nn.Module] = [dense(nf, temb_dim), dense(temb_dim, temb_dim), conv2d(g.num_channels, nf, 3)]
        # The forward pass replays this plan; it mirrors `modules` one to one.
        plan: list[str] = []
        skip_channels, in_ch, pyramid_ch = [nf], nf, g.num_channels
        for level in range(levels):
            for _ in range(g.num_res_blocks):
                out_ch = nf * g.ch_mult[level]
                modules.append(block(in_ch, out_ch))
                plan.append("enc")
                in_ch = out_ch
                if resolutions[level] in g.attn_resolutions:
                    modules.append(AttnBlock(in_ch, g.skip_rescale))
                    plan.append("enc_attn")
                skip_channels.append(in_ch)
            if level != levels - 1:
                modules.append(block(in_ch, in_ch, down=True))
                modules.append(PyramidDownsample(pyramid_ch, in_ch, g.fir_kernel))
                plan += ["down", "pyramid"]
                pyramid_ch = in_ch
                skip_channels.append(in_ch)
        modules += [block(in_ch, in_ch), AttnBlock(in_ch, g.skip_rescale), block(in_ch, in_ch)]
        plan += ["mid", "attn", "mid"]
        for level in reversed(range(levels)):
            for _ in range(g.num_res_blocks + 1):
                out_ch = nf * g.ch_mult[level]
                modules.append(block(in_ch + skip_channels.pop(), out_ch))
                plan.append("dec")
                in_ch = out_ch
            if resolutions[level] in g.attn_resolutions:
                modules.append(AttnBlock(in_ch, g.skip_rescale))
                plan.append("attn")
            if level != 0:
                modules.append(block(in_ch, in_ch, up=True))
                plan.append("up")
        modules += [FP32GroupNorm(_num_groups(in_ch), in_ch, eps=GN_EPS), conv2d(in_ch, g.num_channels, 3)]
        self.all_modules = nn.ModuleList(modules)
        self._plan = plan

        mapping: list[nn.Module] = [PixelNorm(), dense(g.nz, g.z_emb_dim), RowSiLU()]
        for _ in range(g.n_mlp):
            mapping += [dense(g.z_emb_dim, g.z_emb_dim), RowSiLU()]
        self.z_transform = nn.Sequential(*mapping)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """x: (B, C, H, W) noisy x_{t+1} in [-1, 1]; t: (B,) int64 step index; z: (B, nz). Returns x̂_0."""
        m = self.all_modules
        z_emb = self.z_transform(z)
        # x's dtype, not z_emb's: an fp16 export keeps the z path float32 and the time MLP float16
        temb = m[1](rowwise(F.silu, m[0](timestep_embedding(t, self.config.num_channels_dae).to(x.dtype))))
        temb_act = rowwise(F.silu, temb)  # every ResBlock's Dense_0 reads act(temb)

        x = cpu_layout(x)
        pyramid = x
        h = m[2](x)
        skips = [h]
        index = 3
        for step in self._plan:
            module = m[index]
            index += 1
            if step == "enc":
                h = module(h, temb_act, z_emb)
                skips.append(h)
            elif step == "enc_attn":  # the skip pushed after an encoder block is taken after its attention
                h = module(h)
                skips[-1] = h
            elif step == "attn":
                h = module(h)
            elif step == "down":
                h = cpu_layout(module(skips[-1], temb_act, z_emb))
            elif step == "pyramid":
                pyramid = (cpu_layout(module(pyramid)) + h) * (1.0 / math.sqrt(2.0))
                h = pyramid
                skips.append(h)
            elif step == "mid":
                h = module(h, temb_act, z_emb)
            elif step == "dec":
                h = module(torch.cat([h, skips.pop()], dim=1), temb_act, z_emb)
            elif step == "up":
                h = cpu_layout(module(h, temb_act, z_emb))
        h = m[index + 1](F.silu(m[index](h), inplace=True)).contiguous()
        return h if self.config.not_use_tanh else torch.tanh(h)
