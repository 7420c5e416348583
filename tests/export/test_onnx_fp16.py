"""The fp16 ONNX variant: fp16 generator, fp32 normalisations and float32 I/O, within its stated bound."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from ddgan.export.onnx_export import FP16_TOLERANCE, batch_dims, export_onnx
from tests.export.conftest import load_sampler, make_model_dir, tiny_config


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One resolution level keeps this second export short; the fp32 module covers the FIR up/down path.
    model_dir = make_model_dir(tmp_path_factory.mktemp("tiny16") / "model", tiny_config(ch_mult=(1,)), seed=3)
    export_onnx(model_dir, model_dir / "chain.fp16.onnx", fp16=True)
    return model_dir


def test_fp16_graph_keeps_float32_io_and_float32_normalisation(fp16_dir: Path) -> None:
    graph = onnx.load(str(fp16_dir / "chain.fp16.onnx"))
    assert batch_dims(graph) == {"x_T": "batch", "z": "batch", "noise": "batch", "x_0": "batch"}
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == float32 for v in [*graph.graph.input, *graph.graph.output])
    weights = [t for t in graph.graph.initializer if len(t.dims) == 4]  # convolution kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    norms = [n for n in graph.graph.node if n.op_type in ("InstanceNormalization", "GroupNormalization")]
    assert norms
    value_types = {v.name: v.type.tensor_type.elem_type for v in graph.graph.value_info}
    assert all(value_types.get(n.input[0], float32) == float32 for n in norms)


def test_fp16_sampler_is_within_its_bound_of_fp32_torch(fp16_dir: Path) -> None:
    sampler = load_sampler(fp16_dir, backend="onnxruntime", dtype="float16")
    assert sampler.info.dtype == "float16"  # the precision it computes in (inputs and outputs stay float32)
    seeds = [11, 12, 13, 14]
    error = float((sampler.sample(seeds) - load_sampler(fp16_dir).sample(seeds)).abs().max())
    assert 0 < error <= FP16_TOLERANCE  # really fp16 (not bit-exact), and within the bound the export promises
