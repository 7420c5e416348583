"""Golden test: our FID InceptionV3 equals torch-fidelity's TF-FID port on the same (random) weights and images.

torch-fidelity's package `__init__` imports torchvision (which does not import beside the CPU torch), and an
installed torch-fidelity also makes torchmetrics' FID module import it, so CI installs it `--no-deps` into a
folder off the import path (`.ci/run`: `.venv/vendor/torch-fidelity`) and this test loads its extractor module
under a bare package stand-in, never running that `__init__`. Skips cleanly where it is absent.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.model.images import uint8_to_float
from ddgan.training.inception import FIDInceptionV3, tf_resize_bilinear

REPO = Path(__file__).resolve().parents[2]
VENDOR = Path(os.environ.get("DDGAN_TORCH_FIDELITY", REPO / ".venv" / "vendor" / "torch-fidelity"))
PACKAGE = "torch_fidelity"


def _fidelity_extractor_module() -> types.ModuleType:
    root = VENDOR / PACKAGE
    if not (root / "feature_extractor_inceptionv3.py").is_file():
        pytest.skip(f"torch-fidelity not found at {VENDOR} (.ci/run installs it there --no-deps)")
    if PACKAGE in sys.modules and not getattr(sys.modules[PACKAGE], "_ddgan_stand_in", False):
        pytest.skip("a real torch_fidelity package is already imported")
    stand_in = types.ModuleType(PACKAGE)  # a package with the files but without the torchvision-importing __init__
    stand_in.__path__ = [str(root)]
    stand_in._ddgan_stand_in = True  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = stand_in
    return importlib.import_module(f"{PACKAGE}.feature_extractor_inceptionv3")


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> tuple[FIDInceptionV3, torch.nn.Module]:
    module = _fidelity_extractor_module()
    torch.manual_seed(7)
    ours = FIDInceptionV3().eval()
    generator = torch.Generator().manual_seed(8)
    for layer in ours.modules():  # variance-preserving weights and non-trivial batch-norm statistics
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        elif isinstance(layer, torch.nn.BatchNorm2d):
            count = layer.num_features
            layer.weight.data = torch.rand(count, generator=generator) + 0.5
            layer.bias.data = torch.randn(count, generator=generator) * 0.1
            layer.running_mean = torch.randn(count, generator=generator) * 0.1
            layer.running_var = torch.rand(count, generator=generator) + 0.5
    ours.fc.weight.data.normal_(0, 0.02, generator=generator)
    ours.fc.bias.data.normal_(0, 0.1, generator=generator)
    weights = tmp_path_factory.mktemp("fidelity") / "inception.pth"
    torch.save(ours.state_dict(), weights)
    theirs = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits"], str(weights))
    return ours, theirs.eval()


def _compare(networks, pixels: np.ndarray) -> None:
    """pixels (N, H, W, C) uint8: ours sees them as `ddgan eval` does (x / 127.5 - 1), theirs as uint8."""
    ours, theirs = networks
    rgb = np.repeat(pixels, 3, axis=3) if pixels.shape[3] == 1 else pixels
    with torch.no_grad():
        features, logits = ours(uint8_to_float(pixels, channels_last=True))
        ref_features, ref_logits = theirs(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous())
    assert features.shape == ref_features.shape == (len(pixels), 2048)
    assert logits.shape == ref_logits.shape == (len(pixels), 1008)
    assert ref_features.abs().mean() > 1e-2 and ref_logits.std() > 1e-2  # the random network is not degenerate
    torch.testing.assert_close(features, ref_features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_pool_features_and_logits_match_torch_fidelity_through_the_resize(networks):
    rng = np.random.default_rng(0)
    _compare(networks, rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))  # CIFAR-sized RGB, upsampled
    _compare(networks, rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8))  # MNIST gray, repeated to RGB


@pytest.mark.slow
def test_pool_features_and_logits_match_torch_fidelity_at_299(networks):
    # no resize; downsampling is covered by the resize test below
    _compare(networks, np.random.default_rng(1).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8))


def test_tf_resize_matches_torch_fidelity_resize_exactly():
    module = _fidelity_extractor_module()
    resize = sys.modules[f"{PACKAGE}.interpolate_compat_tensorflow"].interpolate_bilinear_2d_like_tensorflow1x
    assert module is not None
    x = torch.rand(2, 3, 17, 23) * 255
    for size in ((299, 299), (8, 5), (17, 23)):
        expected = resize(x, size=size, align_corners=False)
        torch.testing.assert_close(tf_resize_bilinear(x, size), expected, rtol=0, atol=1e-4)


def test_tf_resize_closed_forms():
    x = torch.arange(4.0).reshape(1, 1, 1, 4)  # one row 0 1 2 3
    # TF1 (no half-pixel centres): output i samples input i * in/out, the last input column repeats past the edge
    torch.testing.assert_close(tf_resize_bilinear(x, (1, 8)), torch.tensor([[[[0, 0.5, 1, 1.5, 2, 2.5, 3, 3]]]]))
    torch.testing.assert_close(tf_resize_bilinear(x, (1, 2)), torch.tensor([[[[0.0, 2.0]]]]))
    torch.testing.assert_close(tf_resize_bilinear(x, (1, 4)), x)
