"""InceptionV3 as FID uses it (the TF "2015-12-05" graph ported to PyTorch as `pt_inception-2015-12-05`).

Written from the published architecture (Szegedy et al. 2016) and the FID port's documented deviations from the
torchvision network: 1008 logits, average pools that exclude padding in the A/C/E blocks, and a max pool in the
last E block's pool branch. Module names follow torchvision's `Inception3` so the port's state_dict loads as is.
The input side follows the TF graph, not pytorch-fid's approximation of it: TF 1.x bilinear resizing (no
half-pixel centres) of the 0..255 pixels, then (p − 128) / 128. `tests/training/test_inception_parity.py` holds
the network equal (1e-4) to torch-fidelity's TF-exact port on the same weights and images.
Nothing is downloaded: users pass the weights file (`--inception-weights`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_HELP = (
    f"FID/IS need the FID InceptionV3 weights ({WEIGHTS_NAME}, 95 MB, from {WEIGHTS_URL}); download it once "
    "and pass it with --inception-weights PATH (a .pth state_dict or a .safetensors conversion)"
)
NUM_LOGITS = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299


class InceptionWeightsError(RuntimeError):
    """The Inception weights file is missing or does not match the architecture."""


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, as TF) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Factorised 7×7 convolutions at 17×17."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            dbl = layer(dbl)
        return torch.cat([self.branch1x1(x), branch7x7, self.branch7x7dbl_5(dbl), self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank at 8×8; the TF graph's last block max-pools its pool branch (`max_pool_branch`)."""

    def __init__(self, in_channels: int, max_pool_branch: bool) -> None:
        super().__init__()
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool_branch else _avg_pool(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(B, 3, H, W) images in [-1, 1] -> (pool3 features (B, 2048), logits (B, 1008)).

    Images are x / 127.5 − 1 of uint8 pixels (`model.images.uint8_to_float`); as in the TF graph they are resized
    to 299×299 as 0..255 pixels (`tf_resize_bilinear`) and scaled by (p − 128) / 128. 1-channel images are
    repeated to RGB.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        pixels = tf_resize_bilinear((x + 1.0) * 127.5, (INPUT_SIZE, INPUT_SIZE))
        x = (pixels - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        blocks: list[nn.Module] = [self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b]
        blocks += [self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c]
        for block in blocks:
            x = block(x)
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return features, self.fc(features)


def tf_resize_bilinear(images: Tensor, size: tuple[int, int]) -> Tensor:
    """TF 1.x `resize_bilinear` (align_corners=False, no half-pixel centres), the resize of the TF-FID graph.

    Output index i samples input position i · in/out (float32, as TF computes it), interpolating between floor and
    the next index, clamped at the last one. PyTorch's `interpolate(align_corners=False)` samples (i + ½) · in/out − ½
    instead, which shifts every pixel and changes FID. Width first, then height, as TF's kernel does.
    """
    return _resize_axis(_resize_axis(images, 3, size[1]), 2, size[0])


def _resize_axis(images: Tensor, dim: int, size: int) -> Tensor:
    length = images.shape[dim]
    if length == size:
        return images
    scale = torch.tensor(length / size, dtype=torch.float32)
    source = torch.arange(size, dtype=torch.float32) * scale
    low = source.floor().to(torch.long).clamp(max=length - 1)
    high = (low + 1).clamp(max=length - 1)
    shape = [1] * images.dim()
    shape[dim] = size
    weight = (source - low.to(torch.float32)).to(images.dtype).view(shape).to(images.device)
    first = images.index_select(dim, low.to(images.device))
    second = images.index_select(dim, high.to(images.device))
    return first + (second - first) * weight


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path} holds a {type(state).__name__}, expected a state_dict")
    return state


def load_inception(path: str | Path | None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID InceptionV3 with the weights at `path` (a .pth state_dict or .safetensors), in eval mode."""
    if path is None:
        raise InceptionWeightsError(WEIGHTS_HELP)
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights not found at {path}. {WEIGHTS_HELP}")
    state = _read_state_dict(path)
    state = {key: value for key, value in state.items() if not key.startswith("AuxLogits.")}
    model = FIDInceptionV3()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise InceptionWeightsError(
            f"{path} is not the FID InceptionV3 ({WEIGHTS_NAME}): {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} mis-shaped {wrong[:3]}"
        )
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def inception_outputs(model: FIDInceptionV3, images: Tensor, batch_size: int = 100) -> tuple[Tensor, Tensor]:
    """(pool3 features (N, 2048), logits (N, 1008)) of images in [-1, 1], float64 on the CPU."""
    device = next(model.parameters()).device
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        pool, batch_logits = model(images[start : start + batch_size].float().to(device))
        features.append(pool.double().cpu())
        logits.append(batch_logits.double().cpu())
    return torch.cat(features), torch.cat(logits)
