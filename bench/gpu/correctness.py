"""Stage `correctness`: the device against CPU fp32 on fresh random inputs, per preset and precision.

For each preset, with random weights (parameters that start at zero, biases and the zero-initialised last
convolutions, get random values too, so every path reaches the output):
- the generator alone, G(x_t, t, z) on random x_t, t and z;
- the whole chain through the factory's sampler (`open_sampler`, backend torch) on fresh seeds;
each in fp32 (TF32 off), tf32 (TF32 matmuls and cuDNN convolutions), bf16 and fp16 (the network cast), scored by
‖out − ref‖₂ / ‖ref‖₂ against the CPU fp32 result and a bound stated below; NaN or inf never passes. Then the
CUDA-graph replay (backend `cuda-graphs`) against eager in the same precision, at two batch sizes (two captured
graphs): it must be bit-identical to eager, and a second replay to the first. The smoke plan runs the same
code on the CPU, where the reference is compared with itself and backend torch stands in for the CUDA graphs.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddgan.bench.gpu.common import Plan, StageRecord, describe_error
from ddgan.model.chain import CastingChain
from ddgan.model.checkpoint import save_model
from ddgan.model.config import get_preset
from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.ncsnpp import NCSNpp
from ddgan.model.noise import ChainNoise
from ddgan.model.sampler import open_sampler, random_generator


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: str  # the sampler's dtype: the network is cast to it
    float32_math: str | None  # torch's float32 matmul/convolution precision, "ieee" or "tf32"; None: untouched
    bound: float  # largest accepted ‖out − ref‖₂ / ‖ref‖₂ against CPU fp32


# fp32 at 1e-4 is the bound. The others are 3-5x what the CPU itself gives for the cast network on the
# mnist and cifar10 presets (chain: bf16 8-9e-3, fp16 1.0-1.2e-3; generator alike); TF32 rounds only the inputs
# of products, to fp16's 10 mantissa bits, so it stays inside the fp16 bound.
PRECISIONS = (
    Precision("fp32", "float32", "ieee", 1e-4),
    Precision("tf32", "float32", "tf32", 5e-3),
    Precision("bf16", "bfloat16", None, 3e-2),
    Precision("fp16", "float16", None, 5e-3),
)


@contextlib.contextmanager
def float32_math(mode: str | None) -> Iterator[None]:
    """TF32 on ("tf32") or off ("ieee") for CUDA matmuls and cuDNN, restored afterwards.

    Only the per-backend `fp32_precision` flags are used: once they are set, reading the legacy `allow_tf32` flags
    is an error in torch >= 2.9.
    """
    if mode is None:
        yield
        return
    cudnn: Any = torch.backends.cudnn  # its per-operator flag objects are not in torch's type stubs
    knobs: tuple[Any, ...] = (torch.backends.cuda.matmul, cudnn.conv, cudnn.rnn)
    saved = [knob.fp32_precision for knob in knobs]
    for knob in knobs:
        knob.fp32_precision = mode
    try:
        yield
    finally:
        for knob, value in zip(knobs, saved, strict=True):
            knob.fp32_precision = value


def float32_math_state() -> str:
    """The float32 math flags now in force (what `float32_math` sets)."""
    cudnn: Any = torch.backends.cudnn
    matmul = torch.backends.cuda.matmul.fp32_precision
    return f"fp32_precision: CUDA matmul {matmul!r}, cuDNN conv {cudnn.conv.fp32_precision!r}"


def random_model_dir(preset: str, directory: Path, seed: int = 0) -> Path:
    """A model directory of the preset with random weights in which no parameter is all zero."""
    config = get_preset(preset)
    generator = random_generator(config, seed)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for parameter in generator.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    return save_model(directory, config, generator.state_dict())


def relative_error(out: Tensor, ref: Tensor) -> tuple[float, float, bool]:
    """(‖out − ref‖₂ / ‖ref‖₂, max |out − ref|, all finite), in float64."""
    diff = out.double() - ref.double()
    finite = bool(torch.isfinite(out).all())
    return float(diff.norm() / ref.double().norm()), float(diff.abs().max()), finite


def _torch_sampler(model_dir: Path, device: str, dtype: str) -> DDGANSampler:
    sampler = open_sampler(model_dir, backend="torch", device=device, dtype=dtype)
    assert isinstance(sampler, DDGANSampler) and isinstance(sampler.run_chain, CastingChain)
    return sampler


def _generator(sampler: DDGANSampler) -> NCSNpp:
    assert isinstance(sampler.run_chain, CastingChain)
    generator = sampler.run_chain.chain.generator  # CastingChain -> SamplingChain -> NCSNpp
    assert isinstance(generator, NCSNpp)
    return generator


def _compare(record: StageRecord, base: dict[str, Any], precision: Precision, out: Tensor, ref: Tensor) -> bool:
    rel, max_abs, finite = relative_error(out, ref)
    passed = finite and rel <= precision.bound
    record.add(
        **base,
        precision=precision.name,
        rel=rel,
        max_abs=max_abs,
        bound=precision.bound,
        passed=passed,
        note="" if finite else "non-finite values",
    )
    return passed


def check_graphs(
    record: StageRecord,
    preset: str,
    model_dir: Path,
    plan: Plan,
    precision: Precision,
    eager: DDGANSampler,
    noise: ChainNoise,
) -> bool:
    """CUDA-graph replay against eager at the batch and one less (a second captured graph).

    Without CUDA (the smoke plan) backend torch stands in, so that everything but the capture itself runs.
    """
    backend, note = ("cuda-graphs", "") if plan.device == "cuda" else ("torch", "CPU stand-in: backend torch")
    graphs = open_sampler(model_dir, backend=backend, device=plan.device, dtype=precision.dtype)
    assert isinstance(graphs, DDGANSampler)
    ok = True
    for batch in sorted({noise.x_T.shape[0], max(1, noise.x_T.shape[0] - 1)}, reverse=True):
        part = ChainNoise(noise.x_T[:batch], noise.z[:, :batch], noise.noise[:, :batch])
        expected = eager.sample_from_noise(part)
        first = graphs.sample_from_noise(part)  # captures this batch size's graph
        again = graphs.sample_from_noise(part)  # replays it
        rel, max_abs, finite = relative_error(first, expected)
        bitwise, replay = torch.equal(first, expected), torch.equal(first, again)
        passed = finite and bitwise and replay
        if not passed:
            note = f"bit-identical to eager: {bitwise}; replays identical: {replay}; finite: {finite}"
        record.add(preset=preset, what="cuda-graphs", batch=batch, precision=precision.name, rel=rel,
                   max_abs=max_abs, bound=0.0, passed=passed, note=note)  # fmt: skip
        ok = ok and passed
    return ok


def check_preset(preset: str, batch: int, plan: Plan, record: StageRecord, workdir: Path) -> bool:
    model_dir = random_model_dir(preset, workdir / preset)
    reference = _torch_sampler(model_dir, "cpu", "float32")
    config = reference.config
    input_seed = secrets.randbelow(2**31)  # fresh inputs every run, recorded so a failure can be replayed
    rng = torch.Generator().manual_seed(input_seed)
    x_t = torch.randn(batch, *config.image_shape, generator=rng)
    t = torch.randint(0, config.diffusion.num_timesteps, (batch,), generator=rng)
    z = torch.randn(batch, config.generator.nz, generator=rng)
    noise = reference.noise([input_seed + 1 + i for i in range(batch)])
    with torch.inference_mode():
        generator_ref = _generator(reference)(x_t, t, z)
    chain_ref = reference.sample_from_noise(noise)
    record.note(f"{preset}: inputs from seed {input_seed} (generator) and seeds {input_seed + 1}.. (chain)")
    if plan.device != "cuda":
        record.note(f"{preset}: tf32 on {plan.device} is fp32 again (the TF32 flags apply to CUDA only)")
    ok = True
    for precision in PRECISIONS:
        base = {"preset": preset, "batch": batch}
        if record.seconds_left() < 5:
            record.add(**base, what="all", precision=precision.name, passed=False, note="skipped: stage budget spent")
            ok = False
            continue
        try:
            with float32_math(precision.float32_math):
                sampler = _torch_sampler(model_dir, plan.device, precision.dtype)
                dtype, device = getattr(torch, precision.dtype), torch.device(plan.device)
                with torch.inference_mode():
                    out = _generator(sampler)(x_t.to(device, dtype), t.to(device), z.to(device, dtype))
                ok &= _compare(record, {**base, "what": "generator"}, precision, out.float().cpu(), generator_ref)
                images = sampler.sample_from_noise(noise)
                ok &= _compare(record, {**base, "what": "chain"}, precision, images, chain_ref)
                if precision.name in plan.graph_precisions:
                    ok &= check_graphs(record, preset, model_dir, plan, precision, sampler, noise)
        except Exception as exc:  # one precision failing (unsupported kernel, out of memory) must not stop the rest
            record.add(**base, what="error", precision=precision.name, passed=False, note=describe_error(exc))
            ok = False
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return ok


def run(stage: str, plan: Plan, record: StageRecord) -> bool:
    ok = True
    with tempfile.TemporaryDirectory(prefix="ddgan-gpu-correctness-") as work:
        for preset, batch in plan.correctness.items():
            try:
                ok &= check_preset(preset, batch, plan, record, Path(work))
            except Exception as exc:  # the reference itself failed: record it, go on with the next preset
                record.add(preset=preset, batch=batch, what="reference", passed=False, note=describe_error(exc))
                ok = False
    checked = [row for row in record.rows if row.get("passed") is not None]
    passed = sum(1 for row in checked if row["passed"])
    worst: dict[str, float] = {}
    for row in checked:
        if "rel" in row and row["what"] != "cuda-graphs":
            worst[row["precision"]] = max(worst.get(row["precision"], 0.0), row["rel"])
    figures = ", ".join(f"{name} {value:.1e}" for name, value in worst.items())
    record.set_summary(f"{passed}/{len(checked)} within bounds; worst rel. error {figures}")
    return ok and passed == len(checked)
