"""The VP schedule, q(x_t | x_0), the posterior and the chain against spec §4's tables and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ddgan.model.config import DiffusionConfig
from ddgan.model.diffusion import DiffusionSchedule, SamplingChain, vp_betas

# ddgan-spec §4.2, float32 values as the official code computes them (beta_min 0.1, beta_max 20).
SPEC_TABLES = {
    2: {
        "betas": [0.92132401, 0.99945104],
        "a_s": [0.2804924, 0.0065719],
        "coef1": [1.0, 0.28035054],
        "coef2": [0.0, 0.02158743],
        "variance": [0.0, 0.92085809],
    },
    4: {
        "betas": [0.47825530, 0.84920603, 0.95641768, 0.98740393],
        "a_s": [0.7223190, 0.2804924, 0.0585566, 0.0065719],
        "coef1": [1.0000001, 0.66577846, 0.26919085, 0.05782156],
        "coef2": [0.0, 0.20157626, 0.19300087, 0.11185223],
        "variance": [0.0, 0.44081914, 0.88420242, 0.98406076],
    },
}


def _alpha_bar(tau: float, beta_min: float = 0.1, beta_max: float = 20.0) -> float:
    return math.exp(-0.5 * tau**2 * (beta_max - beta_min) - tau * beta_min)


@pytest.mark.parametrize("steps", [2, 4])
def test_schedule_matches_spec_tables(steps: int) -> None:
    table = SPEC_TABLES[steps]
    schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=steps))
    assert schedule.betas.dtype == torch.float32
    assert schedule.betas[0].item() == pytest.approx(1e-8)
    torch.testing.assert_close(schedule.betas[1:], torch.tensor(table["betas"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.a_s[1:], torch.tensor(table["a_s"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.posterior_mean_coef1, torch.tensor(table["coef1"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.posterior_mean_coef2, torch.tensor(table["coef2"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.posterior_variance, torch.tensor(table["variance"]), rtol=0, atol=1e-7)
    assert schedule.posterior_log_variance_clipped[0].item() == pytest.approx(-46.0517, abs=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_betas_follow_the_vp_closed_form(steps: int) -> None:
    """β_k = 1 − ᾱ(τ_k)/ᾱ(τ_{k−1}) with τ_k = ε + (1−ε)k/T, evaluated independently in float64."""
    tau = [1e-3 + (1 - 1e-3) * k / steps for k in range(steps + 1)]
    expected = [1 - _alpha_bar(tau[k]) / _alpha_bar(tau[k - 1]) for k in range(1, steps + 1)]
    torch.testing.assert_close(vp_betas(DiffusionConfig(num_timesteps=steps))[1:].double(),
                               torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)  # fmt: skip
    # ā_k² = ᾱ(τ_k)/ᾱ(τ_0): the marginal is the VP-SDE's.
    a_s = DiffusionSchedule(DiffusionConfig(num_timesteps=steps)).a_s.double()
    marginal = torch.tensor([_alpha_bar(t) / _alpha_bar(tau[0]) for t in tau], dtype=torch.float64)
    torch.testing.assert_close(a_s**2, marginal, rtol=1e-5, atol=1e-7)


def test_q_sample_closed_forms() -> None:
    schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=4))
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.tensor([0, 1, 2, 4])
    x_t = schedule.q_sample(x_0, t, noise)
    assert torch.equal(x_t[0], x_0[0])  # ā_0 = 1, σ̄_0 = 0 exactly
    for i, k in enumerate(t.tolist()):
        a = schedule.a_s[k].item()
        torch.testing.assert_close(x_t[i], a * x_0[i] + math.sqrt(1 - a * a) * noise[i])


def test_q_sample_pairs_takes_one_forward_step() -> None:
    schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=4))
    generator = torch.Generator().manual_seed(1)
    x_0, noise, noise_next = (torch.randn(3, 1, 4, 4, generator=generator) for _ in range(3))
    t = torch.tensor([0, 1, 3])
    x_t, x_next = schedule.q_sample_pairs(x_0, t, noise, noise_next)
    torch.testing.assert_close(x_t, schedule.q_sample(x_0, t, noise))
    for i, k in enumerate(t.tolist()):
        beta = schedule.betas[k + 1].item()
        torch.testing.assert_close(x_next[i], math.sqrt(1 - beta) * x_t[i] + math.sqrt(beta) * noise_next[i])
    torch.testing.assert_close(schedule.q_step(x_t, t, noise_next), x_next)


def test_posterior_is_the_gaussian_product_of_prior_and_likelihood() -> None:
    """q(x_t | x_{t+1}, x_0) ∝ q(x_{t+1} | x_t) q(x_t | x_0): check mean and variance in float64."""
    schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=4))
    a_s, betas = schedule.a_s.double(), schedule.betas.double()
    for t in range(1, 4):
        prior_mean_coef, prior_var = a_s[t], 1 - a_s[t] ** 2  # q(x_t | x_0)
        step_a, step_var = torch.sqrt(1 - betas[t + 1]), betas[t + 1]  # q(x_{t+1} | x_t)
        precision = 1 / prior_var + step_a**2 / step_var
        var = 1 / precision
        assert schedule.posterior_variance[t].item() == pytest.approx(var.item(), rel=1e-5)
        assert schedule.posterior_mean_coef1[t].item() == pytest.approx(
            (var * prior_mean_coef / prior_var).item(), rel=1e-5
        )
        assert schedule.posterior_mean_coef2[t].item() == pytest.approx((var * step_a / step_var).item(), rel=1e-5)


def test_sample_posterior_adds_no_noise_at_t0() -> None:
    schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=4))
    x_0, x_next, noise = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 5.0)
    out = schedule.sample_posterior(x_0, x_next, torch.tensor([0, 2]), noise)
    assert torch.equal(out[0], schedule.posterior_mean(x_0, x_next, torch.tensor([0, 0]))[0])
    std = math.exp(0.5 * schedule.posterior_log_variance_clipped[2].item())
    torch.testing.assert_close(out[1], schedule.posterior_mean_coef1[2] * x_0[1] + std * noise[1])


class _Recorder(torch.nn.Module):
    """A stand-in generator: records its calls and returns a fixed x̂_0."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone(), z.clone()))
        return torch.full_like(x, 0.5)


def test_chain_calls_the_generator_at_t_minus_one_down_to_zero_with_its_inputs() -> None:
    recorder = _Recorder()
    chain = SamplingChain(recorder, DiffusionConfig(num_timesteps=4))
    schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=4))
    x_T, z, noise = torch.randn(2, 1, 4, 4), torch.randn(4, 2, 3), torch.randn(4, 2, 1, 4, 4)
    x_0 = chain(x_T, z, noise)
    assert [c[1].tolist() for c in recorder.calls] == [[3, 3], [2, 2], [1, 1], [0, 0]]
    assert all(torch.equal(call[2], z[k]) for k, call in enumerate(recorder.calls))
    assert torch.equal(recorder.calls[0][0], x_T)
    expected_x2 = schedule.sample_posterior(torch.full_like(x_T, 0.5), x_T, torch.tensor([3, 3]), noise[0])
    torch.testing.assert_close(recorder.calls[1][0], expected_x2)
    # The last step adds no noise, so x_0 = c1_0 x̂_0 + c2_0 x_1 = x̂_0 (c2_0 = 0).
    torch.testing.assert_close(x_0, torch.full_like(x_0, 0.5))
