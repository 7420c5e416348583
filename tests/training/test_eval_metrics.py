"""Fréchet distance, Inception Score and precision/recall against closed forms on synthetic features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from ddgan.training.evaluation import (
    FeatureStats,
    fid_of_features,
    frechet_distance,
    frechet_distance_of,
    inception_score,
    load_reference_images,
    load_reference_stats,
    precision_recall,
)


def test_fd_of_1d_gaussians_is_mean_and_std_gap():
    # W2² between N(μ1, s1²) and N(μ2, s2²) = (μ1 − μ2)² + (s1 − s2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_fd_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 8))
    cov = a @ a.T + np.eye(8)
    assert frechet_distance(np.ones(8), cov, np.ones(8), cov) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_commuting_covariances():
    # Σ = R diag(a) Rᵀ, Σ' = R diag(b) Rᵀ: FD = ‖Δμ‖² + Σ (√a − √b)²
    rotation = ortho_group.rvs(5, random_state=1)
    a, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2.0, 2.0, 1.0, 9.0, 0.5])
    mu1, mu2 = np.zeros(5), np.array([1.0, 0, 0, 2.0, 0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = frechet_distance(mu1, rotation @ np.diag(a) @ rotation.T, mu2, rotation @ np.diag(b) @ rotation.T)
    assert fd == pytest.approx(expected, rel=1e-9)


def test_fd_general_covariances_matches_the_symmetric_form():
    # Tr((Σ1Σ2)^{1/2}) = Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}) for SPD matrices
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(inner))
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(expected, rel=1e-8)


def test_fd_of_samples_converges_to_closed_form():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200_000, 2))
    y = np.array([0.5, -0.5]) + 2.0 * rng.standard_normal((200_000, 2))
    expected = 0.5 + 2 * (2.0 - 1.0) ** 2  # ‖Δμ‖² + Σ (s1 − s2)²
    assert frechet_distance_of(x, y) == pytest.approx(expected, abs=0.03)


def test_fd_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_stats_round_trip(tmp_path):
    stats = FeatureStats.of(np.random.default_rng(0).standard_normal((50, 4)))
    stats.save(str(tmp_path / "s.npz"))
    loaded = load_reference_stats(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.count == 50
    np.savez(tmp_path / "fid.npz", mu=stats.mean, sigma=stats.cov)  # pytorch-fid's key names
    assert FeatureStats.load(str(tmp_path / "s.npz")).count == 50
    np.testing.assert_array_equal(load_reference_stats(str(tmp_path / "fid.npz")).cov, stats.cov)


def test_fid_through_torchmetrics_matches_our_frechet_distance():
    # two independent implementations (torchmetrics: eigenvalues of Σ1Σ2; ours: scipy sqrtm) on the same features
    rng = np.random.default_rng(4)
    real = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    fake = 0.3 + rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    assert fid_of_features(real, fake) == pytest.approx(frechet_distance_of(real, fake), rel=1e-8)


def test_fid_through_torchmetrics_converges_to_closed_form():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((100_000, 2))
    y = np.array([0.5, -0.5]) + 2.0 * rng.standard_normal((100_000, 2))
    assert fid_of_features(x, y) == pytest.approx(0.5 + 2 * (2.0 - 1.0) ** 2, abs=0.04)


def test_fid_of_features_rejects_mismatched_sets():
    with pytest.raises(ValueError, match="features"):
        fid_of_features(np.zeros((5, 3)), np.zeros((5, 4)))


def test_inception_score_extremes():
    k = 7
    confident = np.tile(40.0 * np.eye(k), (10, 1))  # confident and evenly spread: IS = number of classes
    assert inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-6)
    uniform = np.zeros((40, k))  # no confidence: IS = 1
    assert inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0))
    single = np.tile(40.0 * np.eye(k)[:1], (40, 1))  # confident, one class: IS = 1
    assert inception_score(single, splits=4)[0] == pytest.approx(1.0, abs=1e-6)


def test_inception_score_of_mixed_predictions():
    # two classes, each sample p = (0.9, 0.1) or (0.1, 0.9), balanced: IS = exp(KL(p ‖ (½, ½)))
    logits = np.log(np.array([[0.9, 0.1], [0.1, 0.9]] * 50))
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert inception_score(logits, splits=1)[0] == pytest.approx(math.exp(kl), rel=1e-6)


def test_inception_score_is_repeatable_and_leaves_the_global_rng_alone():
    logits = np.random.default_rng(6).standard_normal((100, 5)) * 3
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = inception_score(logits, splits=5, seed=1)
    assert torch.rand(1) == before
    assert inception_score(logits, splits=5, seed=1) == first


def test_inception_score_rejects_bad_logits():
    with pytest.raises(ValueError, match="finite"):
        inception_score(np.log(np.eye(3).repeat(10, 0)), splits=2)
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((3, 4)), splits=10)


def test_precision_recall_identical_sets():
    x = np.random.default_rng(0).standard_normal((300, 5))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_disjoint_sets():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((200, 3))
    fake = real + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_mode_dropping_keeps_precision_loses_recall():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [50.0, 0.0]])
    real = np.concatenate([c + rng.standard_normal((500, 2)) for c in centres])
    fake = centres[0] + rng.standard_normal((1000, 2))  # only the first mode
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert 0.4 < recall < 0.55


def test_reference_images_from_npz_and_folder(tmp_path):
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", x_train=images[:2], x_test=images)
    loaded = load_reference_images(str(tmp_path / "data.npz"))
    assert loaded.shape == (6, 8, 8, 1)
    assert load_reference_images(str(tmp_path / "data.npz"), limit=3).shape == (3, 8, 8, 1)
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"{i}.png")
    from_folder = load_reference_images(str(tmp_path / "imgs"))
    assert from_folder.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(from_folder[0, :, :, 0], images[0])
    with pytest.raises(FileNotFoundError):
        load_reference_images(str(tmp_path / "missing"))
