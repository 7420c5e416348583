"""The optimised NCSN++ ops equal the plain formulas of ddgan-spec §2.3 (FIR, AdaGN, attention), with autograd.

References here are written tap by tap or with einsum, independently of `model.ncsnpp`'s convolutions.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddgan.bench.official_style import OfficialStyleGenerator, conv_downsample_2d, downsample_2d, upsample_2d
from ddgan.model.compiled_ops import BILINEAR_TAPS, bilinear_fir_upsample, channels_last_group_norm
from ddgan.model.config import GeneratorConfig, from_official_args
from ddgan.model.ncsnpp import (
    AdaptiveGroupNorm,
    AttnBlock,
    NCSNpp,
    PyramidDownsample,
    ResnetBlockBigGAN,
    fir_downsample,
    fir_kernel_2d,
    fir_upsample,
    group_norm,
    rowwise_affine,
)

TOL = 1e-5
TAPS = (1, 3, 3, 1)
FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "ddgan_parity_tiny.pt"
TINY = GeneratorConfig(
    num_channels=3, num_channels_dae=16, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), image_size=32,
    nz=12, z_emb_dim=24, n_mlp=4,
)  # fmt: skip


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter, including the near-zero-initialised ones (Conv_1, NIN_3)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def _kernel() -> torch.Tensor:
    k = torch.tensor(TAPS, dtype=torch.float64)
    return torch.outer(k, k) / torch.outer(k, k).sum()


def _correlate_taps(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> torch.Tensor:
    """out[i, j] = sum_ab kernel[a, b] * x[stride*i + a, stride*j + b], one tap at a time."""
    kh, kw = kernel.shape
    out_h = (x.shape[-2] - kh) // stride + 1
    out_w = (x.shape[-1] - kw) // stride + 1
    out = torch.zeros(*x.shape[:-2], out_h, out_w, dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            out += kernel[a, b] * x[..., a : a + stride * out_h : stride, b : b + stride * out_w : stride]
    return out


def _upsampled_by_taps(x: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling in float64: zeros inserted between pixels, then blurred by 4K."""
    zero_inserted = torch.zeros(*x.shape[:-2], 2 * x.shape[-2], 2 * x.shape[-1], dtype=torch.float64)
    zero_inserted[..., ::2, ::2] = x.double()
    # K is symmetric, so correlation equals the true convolution of upfirdn2d; pad (2, 1) per side as in spec §3.
    return _correlate_taps(F.pad(zero_inserted, (2, 1, 2, 1)), 4.0 * _kernel(), stride=1)


def _input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fir_downsample_is_padded_blur_keeping_every_second_pixel(channels_last: bool) -> None:
    x = _input((2, 5, 8, 8))
    expected = _correlate_taps(F.pad(x.double(), (1, 1, 1, 1)), _kernel(), stride=2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = fir_downsample(x, fir_kernel_2d(TAPS, 5))
    assert out.shape == (2, 5, 4, 4)
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fir_upsample_is_zero_insertion_then_blur_with_gain_four(channels_last: bool) -> None:
    x = _input((2, 5, 6, 6), seed=1)
    expected = _upsampled_by_taps(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = fir_upsample(x, fir_kernel_2d(TAPS, 5))
    assert out.shape == (2, 5, 12, 12)
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=0)
    # A constant image stays constant away from the zero-padded border (the kernel keeps the mean).
    flat = fir_upsample(torch.ones(1, 1, 6, 6), fir_kernel_2d(TAPS, 1))
    torch.testing.assert_close(flat[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8), atol=TOL, rtol=0)


def test_reference_style_upfirdn_matches_the_plain_formulas() -> None:
    """The benchmark's official-style FIR (per-channel reshape, full convolution, subsampling) agrees too."""
    x = _input((2, 4, 8, 8), seed=2)
    kernel = _kernel().float()
    torch.testing.assert_close(downsample_2d(x, kernel), fir_downsample(x, fir_kernel_2d(TAPS, 4)), atol=TOL, rtol=0)
    torch.testing.assert_close(upsample_2d(x, kernel), fir_upsample(x, fir_kernel_2d(TAPS, 4)), atol=TOL, rtol=0)


def test_pyramid_downsample_is_blur_then_strided_conv_plus_bias() -> None:
    module = PyramidDownsample(3, 6, TAPS)
    _randomize(module, seed=3)
    x = _input((2, 3, 8, 8), seed=4)
    blurred = _correlate_taps(F.pad(x.double(), (2, 2, 2, 2)), _kernel(), stride=1)
    w, b = module.Conv2d_0.weight.double(), module.Conv2d_0.bias.double()
    expected = F.conv2d(blurred, w, stride=2) + b[None, :, None, None]
    with torch.no_grad():
        out = module(x)
    assert out.shape == (2, 6, 4, 4)
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=0)
    reference = conv_downsample_2d(x, module.Conv2d_0.weight, _kernel().float()) + module.Conv2d_0.bias[:, None, None]
    torch.testing.assert_close(reference.detach(), out, atol=TOL, rtol=0)


def test_adaptive_group_norm_is_gamma_times_normalised_plus_beta() -> None:
    norm = AdaptiveGroupNorm(8, style_dim=5)
    _randomize(norm, seed=5)
    x, z_emb = _input((3, 8, 4, 4), seed=6) * 3 + 1, _input((3, 5), seed=7)
    groups = x.double().reshape(3, 2, -1)  # min(8 // 4, 32) = 2 groups of 4 channels
    normalised = (groups - groups.mean(-1, keepdim=True)) / torch.sqrt(
        groups.var(-1, unbiased=False, keepdim=True) + 1e-6
    )
    style = z_emb.double() @ norm.style.weight.double().t() + norm.style.bias.double()
    gamma, beta = style[:, :8, None, None], style[:, 8:, None, None]  # gamma first
    expected = gamma * normalised.reshape(3, 8, 4, 4) + beta
    with torch.no_grad():
        out = norm(x.contiguous(memory_format=torch.channels_last), z_emb)
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_matches_einsum_reference_and_keeps_the_layout(channels_last: bool, batch: int) -> None:
    block = AttnBlock(8)
    _randomize(block, seed=8)
    x = _input((batch, 8, 4, 4), seed=9)
    p = {name: value.double() for name, value in block.named_parameters()}
    h = F.group_norm(x.double(), 2, p["GroupNorm_0.weight"], p["GroupNorm_0.bias"], eps=1e-6)
    q, k, v = (torch.einsum("bchw,co->bohw", h, p[f"NIN_{i}.W"]) + p[f"NIN_{i}.b"][:, None, None] for i in range(3))
    w = torch.einsum("bchw,bcij->bhwij", q, k) / math.sqrt(8)
    w = torch.softmax(w.reshape(batch, 4, 4, 16), dim=-1).reshape(batch, 4, 4, 4, 4)
    attended = torch.einsum("bhwij,bcij->bchw", w, v)
    out_proj = torch.einsum("bchw,co->bohw", attended, p["NIN_3.W"]) + p["NIN_3.b"][:, None, None]
    expected = (x.double() + out_proj) / math.sqrt(2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = block(x)
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=0)
    assert out.stride() == x.stride()  # same memory layout out as in, with the same batch stride even at B = 1


@pytest.mark.parametrize("resample", ["none", "up", "down"])
def test_resnet_block_forward_and_gradients_match_reference(resample: str) -> None:
    """In-place updates inside the block must leave autograd's gradients equal to the out-of-place formula.

    Run in float64 so that summation order cannot hide or fake a difference.
    """
    from ddgan.bench.official_style import resnet_block

    block = ResnetBlockBigGAN(
        8, 12, temb_dim=6, z_emb_dim=5, fir_taps=TAPS, up=resample == "up", down=resample == "down"
    )
    _randomize(block, seed=10)
    block.double()
    x, temb, z_emb = (_input(s, seed=11 + i).double() for i, s in enumerate([(2, 8, 8, 8), (2, 6), (2, 5)]))

    def grads(fn):  # type: ignore[no-untyped-def]
        block.zero_grad(set_to_none=True)
        inputs = [t.clone().requires_grad_(True) for t in (x, temb, z_emb)]
        out = fn(*inputs)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        return out.detach(), [i.grad for i in inputs] + [q.grad for q in block.parameters()]

    ours, ours_grads = grads(lambda a, t, z: block(a.contiguous(memory_format=torch.channels_last), F.silu(t), z))
    ref, ref_grads = grads(lambda a, t, z: resnet_block(block, a, t, z, _kernel()))
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    for got, want in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=TOL, rtol=1e-5)


def test_generator_matches_official_style_forward_and_returns_nchw() -> None:
    generator = NCSNpp(TINY).eval()
    _randomize(generator, seed=14)
    x, z = _input((2, 3, 32, 32), seed=15), _input((2, 12), seed=16)
    t = torch.tensor([0, 3])
    with torch.inference_mode():
        ours = generator(x, t, z)
        reference = OfficialStyleGenerator(generator)(x, t, z)
        from_channels_last = generator(x.contiguous(memory_format=torch.channels_last), t, z)
    assert ours.is_contiguous() and ours.shape == (2, 3, 32, 32)
    assert ours.std() > 0.05  # random weights everywhere: the comparison is not between two near-zero outputs
    torch.testing.assert_close(ours, reference, atol=TOL, rtol=0)
    torch.testing.assert_close(from_channels_last, ours, atol=TOL, rtol=0)


@pytest.mark.skipif(not FIXTURE.exists(), reason="shared parity fixture not available")
def test_official_style_reference_reproduces_the_official_output() -> None:
    """The benchmark's yardstick computes what the official code computed (so its timing is a fair reference)."""
    case = torch.load(FIXTURE, weights_only=True)["tiny_cifar_like"]
    generator = NCSNpp(from_official_args(case["args"]).generator).eval()
    generator.load_state_dict({k.removeprefix("module."): v for k, v in case["state_dict"].items()}, strict=True)
    with torch.inference_mode():
        y = OfficialStyleGenerator(generator)(case["x"], case["t"], case["z"])
    assert (y - case["y"]).abs().max().item() <= TOL


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_fir_upsample_is_the_float32_result_rounded_once(channels_last: bool) -> None:
    """bf16 CPU inputs are upsampled in float32 (no oneDNN bf16 depthwise transposed convolution), layout kept."""
    x = _input((2, 6, 5, 5), seed=3).float().to(torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = fir_upsample(x, fir_kernel_2d(TAPS, 6).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(out, fir_upsample(x.float(), fir_kernel_2d(TAPS, 6)).to(torch.bfloat16))


def test_bf16_rowwise_affine_is_the_float32_product_rounded_once_and_batch_independent() -> None:
    torch.manual_seed(4)
    x = torch.randn(5, 3, 16).to(torch.bfloat16)
    weight_t, bias = torch.randn(16, 24).to(torch.bfloat16), torch.randn(24).to(torch.bfloat16)
    out = rowwise_affine(x, weight_t, bias)
    assert out.dtype == torch.bfloat16
    expected = (x.double() @ weight_t.double() + bias.double()).to(torch.bfloat16)  # independent of baddbmm
    assert (out.float() - expected.float()).abs().max() <= 2**-7 * expected.float().abs().max()
    assert torch.equal(out, rowwise_affine(x.float(), weight_t.float(), bias.float()).to(torch.bfloat16))
    assert torch.equal(rowwise_affine(x[3:4], weight_t, bias), out[3:4])  # an image alone = in its batch


@pytest.mark.parametrize("channels_last", [False, True])
def test_bilinear_fir_upsample_is_the_fir_upsample_of_its_taps(channels_last: bool) -> None:
    """torch.compile's upsample (ATen bilinear, border rows and columns scaled) = zero insertion + blur."""
    assert BILINEAR_TAPS == TAPS
    x = _input((2, 5, 6, 7), seed=5)
    expected = _upsampled_by_taps(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = bilinear_fir_upsample(x)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=0)
    # bf16: accumulated in float32 and rounded once, as the eager bf16 path; border pixels rounded twice
    x16 = x.to(torch.bfloat16)
    out16, rounded_once = (
        bilinear_fir_upsample(x16),
        fir_upsample(x16.float(), fir_kernel_2d(TAPS, 5)).to(torch.bfloat16),
    )
    assert torch.equal(out16[..., 1:-1, 1:-1], rounded_once[..., 1:-1, 1:-1])
    torch.testing.assert_close(out16.float(), rounded_once.float(), atol=0, rtol=2**-7)


def test_channels_last_group_norm_has_the_group_statistics() -> None:
    """Per-channel moments combined by the law of total variance = GroupNorm, even far from zero mean."""
    x = (_input((3, 16, 6, 6), seed=6) * 0.5 + torch.linspace(-20, 20, 16)[None, :, None, None]).contiguous(
        memory_format=torch.channels_last
    )
    weight, bias = _input((16,), seed=7), _input((16,), seed=8)
    expected = F.group_norm(x.double(), 4, weight.double(), bias.double(), eps=1e-6)
    out = channels_last_group_norm(x, 4, weight, bias)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        channels_last_group_norm(x, 4, None, None).double(), F.group_norm(x.double(), 4, eps=1e-6), atol=1e-5, rtol=0
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs g++")
def test_compiled_cpu_graphs_use_the_fused_formulations() -> None:
    """Inside torch.compile a channels_last GroupNorm keeps its layout (scale/shift materialised once) and the
    bilinear-tap upsample is the ATen op; both agree with the eager ops."""
    from torch._inductor.utils import run_and_get_code

    x = _input((2, 8, 16, 16), seed=9).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    kernel = fir_kernel_2d(TAPS, 8)

    def block(x: torch.Tensor) -> torch.Tensor:
        return fir_upsample(F.silu(group_norm(x, 2)), kernel, bilinear=True)

    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(block), x)
        eager = block(x)
    source = "\n".join(code)
    assert "ddgan.materialised" in source and "ddgan.bilinear_fir_upsample" in source
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), eager.float(), atol=2**-6 * eager.float().abs().max().item(), rtol=0)
