"""Offline (no-download) sample metrics from the project's MNIST classifier.

- MNIST (1 channel): digit-class histogram, modes covered of 10, mean confidence (max softmax), KL(p̂ ‖ U_10).
- Stacked-MNIST (3 channels, one digit per channel): mode = 100·d_R + 10·d_G + d_B; modes covered of 1000 and
  KL(p̂ ‖ U_1000) on 26,000 samples, the protocol of VEEGAN/PacGAN that DDGAN reports (siddm-notes §2.4).
- Fréchet distance in the classifier's 128-d penultimate feature space, generated vs the real test set, printed
  beside the real-vs-real baseline (a training subset of the same size vs the test set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ddgan.model.config import DictConfig
from ddgan.training.classifier import MnistClassifier, classify, to_input
from ddgan.training.evaluation import frechet_distance_of, kl_to_uniform

# Samples scored by default: 10,000 for MNIST, and the Stacked-MNIST protocol's 26,000 for 3-channel models.
DEFAULT_SAMPLES = {1: 10_000, 3: 26_000}


@dataclass(frozen=True)
class ModeReport(DictConfig):
    num_modes: int  # 10 (MNIST) or 1000 (Stacked-MNIST)
    modes_covered: int
    kl_to_uniform: float
    mean_confidence: float  # mean over samples (and channels) of the max softmax probability
    histogram: list[int]


def mode_report(probabilities: np.ndarray) -> ModeReport:
    """MNIST: probabilities (N, 10) -> digit-mode statistics."""
    labels = probabilities.argmax(axis=1)
    counts = np.bincount(labels, minlength=10)
    return ModeReport(
        10, int((counts > 0).sum()), kl_to_uniform(counts), float(probabilities.max(1).mean()), counts.tolist()
    )


def samples_by_class(probabilities: np.ndarray, per_class: int) -> np.ndarray:
    """(10, per_class) indices of the first samples (in seed order, not the most confident) the classifier puts
    in each digit class; -1 where a class has fewer samples. Rows of a grid a person can check class by class."""
    labels = probabilities.argmax(axis=1)
    table = np.full((probabilities.shape[1], per_class), -1, dtype=np.int64)
    for digit in range(probabilities.shape[1]):
        members = np.flatnonzero(labels == digit)[:per_class]
        table[digit, : len(members)] = members
    return table


def stacked_mode_report(channel_probabilities: np.ndarray) -> ModeReport:
    """Stacked-MNIST: probabilities (N, 3, 10), one digit per channel (R, G, B) -> 1000-mode statistics."""
    if channel_probabilities.ndim != 3 or channel_probabilities.shape[1:] != (3, 10):
        raise ValueError(f"expected (N, 3, 10) probabilities, got {channel_probabilities.shape}")
    digits = channel_probabilities.argmax(axis=2)
    modes = 100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2]
    counts = np.bincount(modes, minlength=1000)
    return ModeReport(
        1000,
        int((counts > 0).sum()),
        kl_to_uniform(counts),
        float(channel_probabilities.max(2).mean()),
        counts.tolist(),
    )


def classify_samples(classifier: MnistClassifier, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, features) of samples; 3-channel images are classified per channel.

    Returns (N, 10) / (N, 128) for 1 channel and (N, 3, 10) / (N, 384) (channel features concatenated) for 3.
    """
    count, channels = images.shape[:2]
    if channels not in (1, 3):
        raise ValueError(f"MNIST metrics need 1- or 3-channel images, got {channels} channels")
    probabilities, features = classify(classifier, images.reshape(count * channels, 1, *images.shape[2:]))
    if channels == 1:
        return probabilities, features
    return probabilities.reshape(count, 3, 10), features.reshape(count, 3 * features.shape[1])


def stack_digits(digits_uint8: np.ndarray, count: int, seed: int) -> Tensor:
    """Real Stacked-MNIST images: `count` random triples of digits as (R, G, B), (count, 3, 28, 28) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(digits_uint8), size=(count, 3))
    return to_input(digits_uint8[index.reshape(-1)]).reshape(count, 3, *digits_uint8.shape[1:])


@dataclass(frozen=True)
class FrechetReport(DictConfig):
    generated_vs_test: float
    real_train_vs_test: float  # the floor: real data of the same sample size
    num_generated: int
    num_reference: int


def classifier_frechet(
    classifier: MnistClassifier,
    generated_features: np.ndarray,
    x_train: np.ndarray,
    x_test: np.ndarray,
    channels: int,
    seed: int = 0,
) -> FrechetReport:
    """Fréchet distance (classifier features) of the samples vs the real test set, and real train-vs-test."""
    count = len(generated_features)
    if channels == 3:
        test_images = stack_digits(x_test, max(count, len(x_test)), seed)
        train_images = stack_digits(x_train, count, seed + 1)
    else:
        test_images = to_input(x_test)
        rng = np.random.default_rng(seed)
        train_images = to_input(x_train[rng.choice(len(x_train), size=min(count, len(x_train)), replace=False)])
    _, test_features = classify_samples(classifier, test_images)
    _, train_features = classify_samples(classifier, train_images)
    return FrechetReport(
        generated_vs_test=frechet_distance_of(generated_features, test_features),
        real_train_vs_test=frechet_distance_of(train_features, test_features),
        num_generated=count,
        num_reference=len(test_features),
    )


def format_report(modes: ModeReport, frechet: FrechetReport | None) -> str:
    """A short human-readable table."""
    lines = [
        f"modes covered        {modes.modes_covered} / {modes.num_modes}",
        f"KL(p_hat || uniform) {modes.kl_to_uniform:.4f}",
        f"mean confidence      {modes.mean_confidence:.4f}",
    ]
    if modes.num_modes == 10:
        total = sum(modes.histogram)
        lines.append(
            "class histogram      "
            + "  ".join(f"{digit}:{count / total:.3f}" for digit, count in enumerate(modes.histogram))
        )
    if frechet is not None:
        lines.append(
            f"classifier FD        {frechet.generated_vs_test:.3f} (generated vs test, n={frechet.num_generated})"
            f" | real-vs-real baseline {frechet.real_train_vs_test:.3f}"
        )
    return "\n".join(lines)


def perfect_sampler_kl(num_samples: int, num_modes: int) -> float:
    """Expected KL(p̂ ‖ U) of a perfect sampler, ≈ (K − 1) / (2N) (first-order chi-square approximation)."""
    return (num_modes - 1) / (2.0 * num_samples) if num_samples > 0 else math.inf
