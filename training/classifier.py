"""A small MNIST digit classifier for offline evaluation: train, save (safetensors + JSON), load, classify.

It gives the metrics that need no download: digit-mode coverage and confidence on MNIST samples, the 1000
Stacked-MNIST modes (one digit per channel), and a Fréchet distance in its penultimate feature space.
Inputs are images in [-1, 1]; 32×32 inputs (MNIST padded 28 → 32, as our presets train) are center-cropped
to 28×28, other sizes are resized.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ddgan.model.checkpoint import atomic_write_bytes, file_sha256
from ddgan.model.config import ConfigError, DictConfig
from ddgan.model.images import uint8_to_float

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT_NAME = "ddgan-mnist-classifier"
INPUT_SIZE = 28


class ClassifierError(RuntimeError):
    """A classifier directory or its data is missing or malformed."""


class MnistClassifier(nn.Module):
    """LeNet-style CNN: two 5×5 conv + max-pool stages, a 128-d feature layer, 10 logits."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)  # 28 -> 24, pool -> 12
        self.conv2 = nn.Conv2d(16, 32, 5)  # 12 -> 8, pool -> 4
        self.fc1 = nn.Linear(32 * 4 * 4, self.feature_dim)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(self.feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations (B, 128) for (B, 1, 28, 28) inputs in [-1, 1]."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.features(x)))


def fit_input(images: Tensor) -> Tensor:
    """(B, 1, H, W) in [-1, 1] -> (B, 1, 28, 28): crop the 2-pixel pad of 32×32 images, resize anything else."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected (B, 1, H, W) images, got {tuple(images.shape)}")
    height, width = images.shape[2:]
    if (height, width) == (INPUT_SIZE, INPUT_SIZE):
        return images
    if height == width and height > INPUT_SIZE and (height - INPUT_SIZE) % 2 == 0 and height <= 36:
        margin = (height - INPUT_SIZE) // 2
        return images[:, :, margin : margin + INPUT_SIZE, margin : margin + INPUT_SIZE]
    return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)


@dataclass(frozen=True)
class ClassifierTrainConfig(DictConfig):
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 2  # random translation augmentation, pixels
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size) < 1 or self.lr <= 0 or self.max_shift < 0:
            raise ConfigError("the classifier needs epochs, batch_size >= 1, lr > 0 and max_shift >= 0")


def load_mnist_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a Keras-layout MNIST `.npz` (uint8 images, int labels)."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"MNIST data not found: {path} (a Keras-layout mnist.npz)")
    with np.load(path, allow_pickle=False) as data:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
        if missing:
            raise ClassifierError(f"{path} lacks arrays {sorted(missing)} (expected the Keras MNIST layout)")
        arrays = [data[key] for key in ("x_train", "y_train", "x_test", "y_test")]
    for images in arrays[0::2]:
        if images.ndim != 3 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
            raise ClassifierError(f"{path}: expected (N, 28, 28) images, got {images.shape}")
    return arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64)


def to_input(images_uint8: np.ndarray) -> Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [-1, 1]."""
    return uint8_to_float(images_uint8).unsqueeze(1)


def _shift(batch: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ±max_shift pixels, filling with background (-1)."""
    padded = F.pad(batch, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(batch), 2), generator=generator)
    rows = [padded[i, :, dy : dy + INPUT_SIZE, dx : dx + INPUT_SIZE] for i, (dy, dx) in enumerate(offsets.tolist())]
    return torch.stack(rows)


@torch.no_grad()
def accuracy(model: MnistClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


def train_classifier(
    data_path: str | Path, config: ClassifierTrainConfig, progress: bool = False
) -> tuple[MnistClassifier, dict]:
    """Train on the 60k training digits; returns the model and its metadata (test accuracy included)."""
    from tqdm import tqdm

    x_train, y_train, x_test, y_test = load_mnist_npz(data_path)
    images, labels = to_input(x_train), torch.from_numpy(y_train)
    test_images, test_labels = to_input(x_test), torch.from_numpy(y_test)
    torch.manual_seed(config.seed)
    model = MnistClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(config.seed)
    start = time.time()
    bar = tqdm(total=config.epochs * steps_per_epoch, disable=not progress, unit="step", dynamic_ncols=True)
    for epoch in range(config.epochs):
        bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = _shift(images[index], config.max_shift, generator) if config.max_shift else images[index]
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
        logger.info(
            "epoch %d/%d: loss %.4f, test accuracy %.4f",
            epoch + 1,
            config.epochs,
            loss.item(),
            accuracy(model, test_images, test_labels),
        )
    bar.close()
    metadata = {
        "format": FORMAT_NAME,
        "input_size": INPUT_SIZE,
        "feature_dim": MnistClassifier.feature_dim,
        "test_accuracy": accuracy(model, test_images, test_labels),
        "train_seconds": round(time.time() - start, 1),
        "train_config": config.to_dict(),
        "data_sha256": file_sha256(data_path),
    }
    return model.eval(), metadata


def save_classifier(directory: str | Path, model: MnistClassifier, metadata: dict) -> Path:
    directory = Path(directory)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": FORMAT_NAME}))
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(metadata, indent=2) + "\n").encode())
    return directory


def load_classifier(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MnistClassifier, dict]:
    directory = Path(directory)
    weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not weights.is_file() or not config.is_file():
        raise ClassifierError(
            f"{directory} is not a classifier directory (needs {WEIGHTS_FILE} and {CONFIG_FILE}); "
            "train one with `ddgan train-classifier --data mnist.npz --out DIR`"
        )
    metadata = json.loads(config.read_text())
    if metadata.get("format") != FORMAT_NAME:
        raise ClassifierError(f"{config}: format {metadata.get('format')!r}, expected {FORMAT_NAME!r}")
    model = MnistClassifier()
    try:
        model.load_state_dict(load_file(weights))
    except RuntimeError as exc:
        raise ClassifierError(f"{weights} does not fit the classifier architecture: {exc}") from exc
    return model.to(device).eval(), metadata


@torch.no_grad()
def classify(model: MnistClassifier, images: Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, 10) and penultimate features (N, 128) of (N, 1, H, W) images in [-1, 1]."""
    model.eval()
    device = next(model.parameters()).device
    probabilities, features = [], []
    for start in range(0, len(images), batch_size):
        batch = fit_input(images[start : start + batch_size].float()).to(device)
        h = model.features(batch)
        probabilities.append(F.softmax(model.fc2(h), dim=1).cpu())
        features.append(h.cpu())
    return torch.cat(probabilities).double().numpy(), torch.cat(features).double().numpy()
