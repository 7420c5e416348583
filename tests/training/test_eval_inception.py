"""The FID InceptionV3: structure (names, shapes), forward on random weights, weights loading. No download."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from training.inception import (
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
def test_inception_outputs_are_batch_independent_probabilities(net):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    features, probs = inception_outputs(net, x, batch_size=1)
    together, _ = inception_outputs(net, x, batch_size=2)
    assert features.dtype == torch.float64 and features.shape == (2, 2048)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(features, together, rtol=1e-4, atol=1e-5)


def test_wrong_weights_are_rejected_with_key_report(tmp_path):
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "bad.pth")
    with pytest.raises(InceptionWeightsError, match="missing keys"):
        load_inception(tmp_path / "bad.pth")
