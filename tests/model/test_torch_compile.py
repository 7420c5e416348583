"""The `torch-compile` backend on the CPU: weights frozen by default, images as torch eager's, option errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.sampler import SamplerError, open_sampler
from ddgan.model.torch_backends import CompiledChain

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs g++")


@pytest.mark.slow
def test_compiled_chain_freezes_weights_on_cpu_and_matches_eager(tiny_model_dir: Path) -> None:
    eager = open_sampler(tiny_model_dir)
    compiled = open_sampler(tiny_model_dir, backend="torch-compile")
    assert compiled.info.backend == "torch-compile"
    assert isinstance(compiled, DDGANSampler) and isinstance(compiled.run_chain, CompiledChain)
    assert compiled.run_chain.freezing and compiled.run_chain.mode == "default"
    seeds = [3, 4, 5]
    images, code = run_and_get_code(compiled.sample, seeds)
    # frozen: the weights are constants of the generated code (torch.compile(options={"freezing": True}) left
    # them graph inputs) and the convolutions run on pre-packed oneDNN weights
    source = "\n".join(code)
    assert "_frozen_param" in source and "_convolution_pointwise" in source
    torch.testing.assert_close(images, eager.sample(seeds), rtol=0, atol=1e-4)


def test_freezing_option_is_checked(tiny_model_dir: Path) -> None:
    with pytest.raises(SamplerError, match="freezing needs compile_mode 'default'"):
        open_sampler(tiny_model_dir, backend="torch-compile", options={"compile_mode": "max-autotune"})
    with pytest.raises(SamplerError, match="freezing must be true or false"):
        open_sampler(tiny_model_dir, backend="torch-compile", options={"freezing": "yes"})
    unfrozen = open_sampler(
        tiny_model_dir, backend="torch-compile", options={"compile_mode": "max-autotune", "freezing": False}
    )
    assert unfrozen.info.backend == "torch-compile"
