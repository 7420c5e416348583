"""`ddgan bench int8`: a calibrated QDQ graph with the asked nodes kept in fp32, and a report that adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ddgan.cli
from ddgan.model.checkpoint import load_config, save_model
from ddgan.model.config import DiffusionConfig, GeneratorConfig, ModelConfig
from ddgan.model.ncsnpp import NCSNpp

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TINY = ModelConfig(
    preset="tiny",
    generator=GeneratorConfig(
        num_channels=1, num_channels_dae=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16,
        nz=4, z_emb_dim=8, n_mlp=1,
    ),
    diffusion=DiffusionConfig(num_timesteps=2),
    dataset="tiny-test",
)  # fmt: skip
QUANTISABLE = ("Conv", "MatMul", "Gemm")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ddgan.export.onnx_export import export_onnx

    directory = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_model(directory, TINY, NCSNpp(TINY.generator).state_dict())
    export_onnx(directory, directory / "chain.onnx", max_batch=4)
    return directory


def _int8_weights(graph: onnx.GraphProto) -> dict[str, bool]:
    """Quantisable node name -> whether its weight (second input) comes through DequantizeLinear."""
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name: node.input[1] in dequantized for node in graph.node if node.op_type in QUANTISABLE}


@pytest.mark.slow
def test_quantize_chain_writes_qdq_and_keeps_the_first_and_last_nodes_in_fp32(tiny_model: Path, tmp_path) -> None:
    from ddgan.bench.int8 import quantize_chain

    graph = onnx.load(str(tiny_model / "chain.onnx")).graph
    initializers = {tensor.name for tensor in graph.initializer}
    nodes = [node for node in graph.node if node.op_type in QUANTISABLE]
    weights = [node.input[1] for node in nodes if node.input[1] in initializers]
    layers = list(dict.fromkeys(weights))  # each layer's weight, in order; the chain runs every layer T times
    steps = TINY.diffusion.num_timesteps
    out = tmp_path / "chain.int8.onnx"
    quantized, kept = quantize_chain(
        tiny_model / "chain.onnx", out, load_config(tiny_model), calibration_batches=1, keep_fp32=1
    )
    kept_weights = [weights.count(layers[0]), weights.count(layers[-1])]
    assert len(kept) == sum(kept_weights) and quantized == len(nodes) - len(kept)
    assert weights.count(layers[-1]) == steps  # the output convolution, once per denoising step
    int8_weights = _int8_weights(onnx.load(str(out)).graph)
    assert set(kept) <= set(int8_weights) and not any(int8_weights[name] for name in kept)
    assert sum(int8_weights.values()) == quantized


@pytest.mark.slow
def test_the_report_gives_the_speed_ratio_and_the_8_bit_error(tiny_model: Path, tmp_path, capsys) -> None:
    report = tmp_path / "int8.json"
    argv = ["bench", "int8", "--model", str(tiny_model), "--batch", "3", "--calibration-batches", "1"]
    assert ddgan.cli.main([*argv, "--rounds", "1", "--threads", "1", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["model"] == tiny_model.name and result["batch"] == 3 and result["calibration_images"] == 8
    assert result["speedup"] == pytest.approx(result["fp32_ms"] / result["int8_ms"])
    assert 0 < result["max_levels"] <= 255 and result["mean_levels"] <= result["p99_levels"] <= result["max_levels"]
    assert result["within_bound"] == (result["mean_levels"] <= 1 and result["max_levels"] <= 8)
    table = capsys.readouterr().out
    assert "flags " in table.splitlines()[0] and f"{result['speedup']:.2f}x" in table
