"""The 2-D toy study: PacGAN metrics on known distributions (closed forms) and tiny training runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddgan.training.toy import (
    GRID_STD,
    SWEEP_CONFIGS,
    ToyConfig,
    ToyModel,
    format_table,
    grid_means,
    grid_metrics,
    mixture_moments,
    run_sweep,
    sample_grid,
    train_toy,
)

HQ_CEILING = 1.0 - math.exp(-4.5)  # P(chi²_2 < 9): share of a 2-D Gaussian within 3σ


def test_grid_is_the_pacgan_grid():
    means = grid_means()
    assert means.shape == (25, 2)
    assert sorted(set(means[:, 0])) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert len({tuple(m) for m in means}) == 25


def test_perfect_sampler_covers_all_modes_with_the_3_sigma_ceiling():
    samples = sample_grid(25_000, torch.Generator().manual_seed(0)).numpy()
    metrics = grid_metrics(samples)
    assert metrics.modes_covered == 25
    assert metrics.high_quality == pytest.approx(HQ_CEILING, abs=4 * math.sqrt(HQ_CEILING * (1 - HQ_CEILING) / 25_000))
    assert 0 <= metrics.reverse_kl < 24 / 25_000 * 4  # E[KL] ≈ (K − 1) / 2N for a multinomial sample
    assert metrics.frechet_2d < 0.05


def test_pacgan_protocol_size_perfect_sampler():
    metrics = grid_metrics(sample_grid(2_500, torch.Generator().manual_seed(1)).numpy())
    assert metrics.modes_covered == 25
    assert 0.97 < metrics.high_quality < 1.0


def test_single_gaussian_at_one_mode_covers_one():
    rng = np.random.default_rng(0)
    samples = np.array([2.0, -4.0]) + GRID_STD * rng.standard_normal((2_500, 2))
    metrics = grid_metrics(samples)
    assert metrics.modes_covered == 1
    assert metrics.reverse_kl == pytest.approx(math.log(25))
    assert metrics.high_quality == pytest.approx(HQ_CEILING, abs=0.01)


@pytest.mark.parametrize("k", [1, 5, 13, 25])
def test_reverse_kl_of_k_equal_modes_is_log_25_over_k(k):
    samples = np.repeat(grid_means()[:k], 100, axis=0)
    metrics = grid_metrics(samples)
    assert metrics.modes_covered == k
    assert metrics.high_quality == 1.0
    assert metrics.reverse_kl == pytest.approx(math.log(25 / k), abs=1e-12)


def test_reverse_kl_of_skewed_histogram():
    # 3/4 of the good samples on mode 0, 1/4 on mode 1: KL = 3/4 log(25·3/4) + 1/4 log(25/4)
    samples = np.concatenate([np.repeat(grid_means()[:1], 300, 0), np.repeat(grid_means()[1:2], 100, 0)])
    expected = 0.75 * math.log(25 * 0.75) + 0.25 * math.log(25 * 0.25)
    assert grid_metrics(samples).reverse_kl == pytest.approx(expected)


def test_off_grid_samples_are_not_high_quality():
    samples = np.full((100, 2), 1.0)  # between modes: 1 unit = 20σ from the nearest
    metrics = grid_metrics(samples)
    assert metrics.modes_covered == 0
    assert metrics.high_quality == 0.0
    assert math.isnan(metrics.reverse_kl)


def test_mixture_moments_closed_form():
    mean, cov = mixture_moments()
    np.testing.assert_allclose(mean, 0.0)
    np.testing.assert_allclose(cov, (8.0 + GRID_STD**2) * np.eye(2))  # mean of {16, 4, 0, 4, 16} is 8


def test_moment_matched_gaussian_fools_fd_but_not_high_quality():
    rng = np.random.default_rng(0)
    samples = math.sqrt(8.0 + GRID_STD**2) * rng.standard_normal((20_000, 2))
    metrics = grid_metrics(samples)
    assert metrics.frechet_2d < 0.05
    assert metrics.high_quality < 0.02


def test_bad_sample_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        grid_metrics(np.zeros((10, 3)))


def test_config_validation():
    with pytest.raises(ValueError, match="T = 1"):
        ToyConfig(objective="gan", num_timesteps=2)
    with pytest.raises(ValueError, match="objective"):
        ToyConfig(objective="vae")


@pytest.mark.parametrize(("objective", "steps"), [("gan", 1), ("ddgan", 2), ("siddm", 4)])
def test_tiny_training_run_returns_finite_metrics(objective, steps):
    config = ToyConfig(
        objective=objective,
        num_timesteps=steps,
        iterations=3,
        batch_size=32,
        num_train_points=500,
        num_eval_samples=200,
        hidden=16,
    )
    model, metrics, history = train_toy(config, log_every=1)
    assert len(history) == 3
    assert all(math.isfinite(h["loss_d"]) and math.isfinite(h["loss_g"]) for h in history)
    assert 0 <= metrics.modes_covered <= 25 and 0.0 <= metrics.high_quality <= 1.0
    assert math.isfinite(metrics.frechet_2d)
    assert model.sample(7, torch.Generator().manual_seed(0)).shape == (7, 2)


def test_training_is_reproducible_from_the_seed():
    config = ToyConfig(
        objective="ddgan",
        num_timesteps=2,
        iterations=2,
        batch_size=16,
        num_train_points=100,
        num_eval_samples=50,
        hidden=8,
    )
    np.testing.assert_equal(train_toy(config)[1].to_dict(), train_toy(config)[1].to_dict())  # NaN-aware


def test_siddm_afd_term_changes_the_generator_update():
    def g_after_one_step(lambda_afd):
        torch.manual_seed(0)
        model = ToyModel(ToyConfig(objective="siddm", num_timesteps=4, hidden=16, lambda_afd=lambda_afd))
        model.step(sample_grid(64, torch.Generator().manual_seed(0)) / 4, torch.Generator().manual_seed(1))
        return torch.cat([p.detach().flatten() for p in model.generator.parameters()])

    assert not torch.allclose(g_after_one_step(0.0), g_after_one_step(1.0))


@pytest.mark.slow
def test_sweep_is_resumable_and_tabulated(tmp_path):
    out = tmp_path / "toy.json"
    tiny = dict(iterations=1, batch_size=8, num_train_points=64, num_eval_samples=30, hidden=8)
    runs = run_sweep(out, seeds=[0], **tiny)
    assert [(r["objective"], r["steps"]) for r in runs] == SWEEP_CONFIGS
    stored = json.loads(out.read_text())
    assert len(stored) == len(SWEEP_CONFIGS)
    assert json.dumps(run_sweep(out, seeds=[0], **tiny)) == json.dumps(stored)  # nothing re-run
    table = format_table(stored)
    assert table.count("\n") == len(SWEEP_CONFIGS) + 1
    assert "| siddm | 16 | 1 |" in table
