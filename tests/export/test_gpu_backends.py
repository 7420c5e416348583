"""GPU backends: TensorRT engine build/load, ONNX Runtime CUDA, CUDA graphs (skipped without CUDA)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ddgan.export.artifacts import metadata_path, read_engine_metadata
from ddgan.export.onnx_export import export_onnx
from tests.export.conftest import load_sampler, make_model_dir, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs tensorrt (gpu extra)")
SEEDS = [3, 4, 5, 6, 7]


@pytest.fixture(scope="module")
def gpu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = make_model_dir(tmp_path_factory.mktemp("gpu") / "model", tiny_config())
    export_onnx(model_dir, model_dir / "chain.onnx", max_batch=16)
    return model_dir


@pytest.fixture(scope="module")
def reference(gpu_dir: Path) -> torch.Tensor:
    return load_sampler(gpu_dir, backend="torch").sample(SEEDS)


@needs_tensorrt
def test_tensorrt_engine_matches_torch_and_records_its_target(gpu_dir: Path, reference: torch.Tensor) -> None:
    from ddgan.export.trt_build import build_engine

    meta = build_engine(gpu_dir / "chain.onnx", min_batch=1, opt_batch=4, max_batch=4)
    assert (gpu_dir / "chain.plan").is_file() and (gpu_dir / "trt-timing.cache").is_file()
    assert meta.gpu_name == torch.cuda.get_device_name(0) and meta.profile["max_batch"] == 4
    sampler = load_sampler(gpu_dir, backend="tensorrt", device="cuda")
    images = sampler.sample(SEEDS)  # 5 > max batch 4: runs in two chunks
    assert float((images - reference).abs().max()) <= 5e-3  # TF32 convolutions are allowed in fp32 engines


@needs_tensorrt
def test_engine_for_another_gpu_is_refused_with_the_reason(gpu_dir: Path) -> None:
    from ddgan.export.trt_build import build_engine
    from ddgan.export.trt_runtime import EngineMismatchError

    if not (gpu_dir / "chain.plan").is_file():
        build_engine(gpu_dir / "chain.onnx", min_batch=1, opt_batch=4, max_batch=4)
    meta_file = metadata_path(gpu_dir / "chain.plan")
    original = meta_file.read_text()
    data = json.loads(original)
    data["gpu_name"], data["tensorrt_version"] = "NVIDIA A100-SXM4-80GB", "10.0.1"
    meta_file.write_text(json.dumps(data))
    try:
        with pytest.raises(EngineMismatchError, match="built for NVIDIA A100-SXM4-80GB .* TensorRT 10.0.1"):
            load_sampler(gpu_dir, backend="tensorrt", device="cuda")
    finally:
        meta_file.write_text(original)
    assert read_engine_metadata(gpu_dir / "chain.plan").gpu_name == torch.cuda.get_device_name(0)


def test_cuda_graphs_match_eager(gpu_dir: Path, reference: torch.Tensor) -> None:
    sampler = load_sampler(gpu_dir, backend="cuda-graphs", device="cuda")
    first = sampler.sample(SEEDS)
    assert torch.equal(first, sampler.sample(SEEDS))  # replay of the captured graph
    assert float((first - reference).abs().max()) <= 1e-3


def test_onnxruntime_cuda_matches_torch(gpu_dir: Path, reference: torch.Tensor) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    sampler = load_sampler(gpu_dir, backend="onnxruntime", device="cuda")
    assert float((sampler.sample(SEEDS) - reference).abs().max()) <= 1e-3
