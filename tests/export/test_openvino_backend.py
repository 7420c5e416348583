"""The openvino backend: the exported fp32 chain.onnx on OpenVINO's CPU plugin, with the ONNX artefact checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ddgan.export.artifacts import metadata_path
from ddgan.export.onnx_export import export_onnx
from ddgan.model.sampler import SamplerError, backend_availability
from tests.export.conftest import load_sampler, make_model_dir, tiny_config

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow  # one real ONNX export of the tiny model (~20 s on an idle 2-core machine)


@pytest.fixture(scope="module")
def exported(tiny_dir: Path) -> Path:
    output = tiny_dir / "chain.onnx"
    if not output.is_file():
        export_onnx(tiny_dir, output, max_batch=8, verify_batches=(1, 3))
    return output


def test_openvino_matches_torch_for_the_same_seeds(exported: Path, tiny_dir: Path) -> None:
    assert backend_availability("cpu")["openvino"] is None
    vino = load_sampler(tiny_dir, backend="openvino", options={"threads": 1})
    torch_sampler = load_sampler(tiny_dir)
    assert (vino.info.backend, vino.info.dtype) == ("openvino", "float32")
    seeds = [3, 4, 5]
    images = vino.sample(seeds)
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.float32
    torch.testing.assert_close(images, torch_sampler.sample(seeds), rtol=0, atol=1e-4)
    # A fixed micro-batch makes an image the same alone or in a batch on this backend too.
    exact = vino.with_micro_batch(2)
    assert torch.equal(exact.sample([5]), exact.sample(seeds)[2:3])


def test_openvino_refuses_stale_or_missing_artefacts(exported: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_model_dir(other, tiny_config(), seed=9)  # same architecture, other weights
    with pytest.raises(SamplerError, match="no exported chain.onnx; export it with: ddgan export onnx"):
        load_sampler(other, backend="openvino")
    shutil.copy(exported, other / "chain.onnx")
    shutil.copy(metadata_path(exported), other / "chain.onnx.json")
    with pytest.raises(SamplerError, match="stale"):
        load_sampler(other, backend="openvino")


def test_openvino_precision_is_explicit(exported: Path, tiny_dir: Path) -> None:
    from ddgan.export.openvino_backend import cpu_capabilities

    with pytest.raises(SamplerError, match="computes in float32, bfloat16, not float16"):
        load_sampler(tiny_dir, backend="openvino", dtype="float16")
    if "BF16" not in cpu_capabilities():
        with pytest.raises(SamplerError, match="no bf16 support in OpenVINO"):
            load_sampler(tiny_dir, backend="openvino", dtype="bfloat16")
    with pytest.raises(SamplerError, match="runs on the CPU only|CUDA is not available"):
        load_sampler(tiny_dir, backend="openvino", device="cuda")
