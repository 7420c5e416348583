"""The FID InceptionV3: structure (names, shapes), forward on random weights, weights loading. No download."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ddgan.training.inception import (
    WEIGHTS_NAME,
    FIDInceptionV3,
    InceptionWeightsError,
    inception_outputs,
    load_inception,
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return FIDInceptionV3().eval()


def test_state_dict_names_and_shapes_follow_the_fid_port(net):
    state = net.state_dict()
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert not any(k.endswith("conv.bias") for k in state)  # BasicConv2d convs have no bias (batch norm follows)
    assert all(m.eps == 0.001 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # 94 BasicConv2d layers (conv + 5 batch-norm tensors each) + fc
    assert sum(k.endswith(".conv.weight") for k in state) == 94


def test_forward_shapes_on_random_weights(net):
    seen = {}
    hooks = [
        getattr(net, name).register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.shape))
        for name in ("Mixed_5d", "Mixed_6e", "Mixed_7c")
    ]
    with torch.no_grad():
        features, logits = net(torch.rand(1, 3, 32, 32) * 2 - 1)  # resized to 299 inside
    for hook in hooks:
        hook.remove()
    assert features.shape == (1, 2048) and logits.shape == (1, 1008)
    assert seen == {
        "Mixed_5d": (1, 288, 35, 35),
        "Mixed_6e": (1, 768, 17, 17),
        "Mixed_7c": (1, 2048, 8, 8),
    }
    assert torch.isfinite(features).all() and (features >= 0).all()  # pooled ReLU outputs


@pytest.mark.slow
def test_grayscale_input_equals_repeated_rgb(net):
    gray = torch.rand(1, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        a, _ = net(gray)
        b, _ = net(gray.repeat(1, 3, 1, 1))
    torch.testing.assert_close(a, b)


def test_missing_weights_error_names_the_file(tmp_path):
    with pytest.raises(InceptionWeightsError, match=WEIGHTS_NAME) as info:
        load_inception(None)
    assert "--inception-weights" in str(info.value) and "https://" in str(info.value)
    with pytest.raises(InceptionWeightsError, match="not found"):
        load_inception(tmp_path / "nope.pth")


@pytest.mark.slow
def test_weights_load_from_pth_and_safetensors(net, tmp_path):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1000, 768)}, tmp_path / "w.pth")  # aux head ignored
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        loaded = load_inception(tmp_path / name)
        assert not loaded.training
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)


@pytest.mark.slow
def test_inception_outputs_are_batch_independent(net):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    features, logits = inception_outputs(net, x, batch_size=1)
    together, together_logits = inception_outputs(net, x, batch_size=2)
    assert features.dtype == torch.float64 and features.shape == (2, 2048)
    assert logits.dtype == torch.float64 and logits.shape == (2, 1008)
    torch.testing.assert_close(features, together, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, together_logits, rtol=1e-4, atol=1e-5)


def test_wrong_weights_are_rejected_with_key_report(tmp_path):
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "bad.pth")
    with pytest.raises(InceptionWeightsError, match="missing keys"):
        load_inception(tmp_path / "bad.pth")


@pytest.mark.slow
def test_eval_command_reports_fid_is_and_precision_recall(tmp_path):
    import argparse
    import json

    import numpy as np

    from ddgan.model.checkpoint import save_model
    from ddgan.model.config import get_preset
    from ddgan.model.images import uint8_to_float
    from ddgan.model.sampler import random_generator
    from ddgan.training.eval_cli import register
    from ddgan.training.evaluation import FeatureStats

    config = get_preset("mnist")
    save_model(tmp_path / "model", config, random_generator(config).state_dict())
    torch.manual_seed(1)
    net = FIDInceptionV3().eval()
    for module in net.modules():  # variance-preserving init: torch's default makes the deep features vanish
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), tmp_path / WEIGHTS_NAME)
    reference = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", x_test=reference)
    ref_features, _ = inception_outputs(net, uint8_to_float(reference[..., None], channels_last=True))
    FeatureStats.of(ref_features.numpy()).save(str(tmp_path / "ref_stats.npz"))

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    reports = {}
    for name in ("ref.npz", "ref_stats.npz"):
        out = tmp_path / f"{name}.json"
        common = ["--model", str(tmp_path / "model"), "--n", "12", "--batch-size", "6", "--out", str(out)]
        weights = ["--inception-weights", str(tmp_path / WEIGHTS_NAME), "--fid-ref", str(tmp_path / name)]
        parsed = parser.parse_args(["eval", *common, *weights])
        assert parsed.handler(parsed) == 0
        reports[name] = json.loads(out.read_text())["inception"]

    from_images, from_stats = reports["ref.npz"], reports["ref_stats.npz"]
    assert from_images["fid"] > 1e-6 and 1.0 - 1e-9 <= from_images["inception_score"] <= 1008
    assert 0.0 <= from_images["precision"] <= 1.0 and 0.0 <= from_images["recall"] <= 1.0
    assert "precision" not in from_stats  # statistics cannot give precision/recall
    # torchmetrics (image reference) and our Fréchet distance (statistics reference) agree on the same features;
    # 12 samples in 2048 dimensions make both covariances singular, where the two matrix square roots differ a little
    assert from_stats["fid"] == pytest.approx(from_images["fid"], rel=1e-2)
    assert from_stats["inception_score"] == from_images["inception_score"]
