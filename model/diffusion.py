"""DDGAN's discretised VP diffusion: schedule, forward sampling q, posterior q(x_t | x_{t+1}, x_0), the chain.

Index convention (ddgan-spec §4.2): k = 0..T with k = 0 the clean data; the generator is conditioned on the
integer index t ∈ {0..T-1} of the *target* x_t of the transition x_{t+1} → x_t. Values follow the official
operation order and precision: betas in float64 then float32, posterior coefficients in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddgan.model.config import DiffusionConfig

_TIME_EPS = 1e-3


def vp_betas(config: DiffusionConfig) -> Tensor:
    """β_0..β_T (β_0 = 1e-8 placeholder): β_k = 1 − ᾱ(τ_k)/ᾱ(τ_{k−1}), ᾱ(τ) = exp(−½τ²(β_max−β_min) − τβ_min)."""
    steps = config.num_timesteps
    tau = torch.arange(steps + 1, dtype=torch.float64) / steps * (1.0 - _TIME_EPS) + _TIME_EPS
    alpha_bar = torch.exp(-0.5 * tau**2 * (config.beta_max - config.beta_min) - tau * config.beta_min)
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return torch.cat([torch.tensor([1e-8], dtype=torch.float64), betas]).to(torch.float32)


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    return values[t].view(-1, *([1] * (like.dim() - 1)))


class DiffusionSchedule(nn.Module):
    """Forward marginals and the posterior of DDGAN's T-step chain, as (non-persistent) float32 buffers."""

    betas: Tensor
    a_s: Tensor
    sigmas: Tensor
    step_a: Tensor
    step_sigma: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.num_timesteps = config.num_timesteps
        betas = vp_betas(config)
        # Marginal q(x_k | x_0) = N(ā_k x_0, σ̄_k² I) with ā_k = Π_{j≤k} √(1−β_j) (Eq. 1 of DDPM, discretised VP).
        a_s = torch.cumprod(torch.sqrt(1.0 - betas), dim=0)
        buffers = {
            "betas": betas,
            "a_s": a_s,
            "sigmas": torch.sqrt(1.0 - a_s**2),
            "step_a": torch.sqrt(1.0 - betas),  # one forward step x_{k-1} -> x_k
            "step_sigma": torch.sqrt(betas),
        }
        # Posterior q(x_t | x_{t+1}, x_0) for t = 0..T-1 (DDPM Eq. 6-7 with b_t = β_{t+1}).
        b = betas[1:]
        alphas = 1.0 - b
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float32), alphas_cumprod[:-1]])
        variance = b * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        buffers.update(
            posterior_mean_coef1=b * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
            posterior_variance=variance,
            posterior_log_variance_clipped=torch.log(variance.clamp(min=1e-20)),
        )
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def q_sample(self, x_0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) = ā_t x_0 + σ̄_t ε."""
        return _per_sample(self.a_s, t, x_0) * x_0 + _per_sample(self.sigmas, t, x_0) * noise

    def q_sample_pairs(self, x_0: Tensor, t: Tensor, noise: Tensor, noise_next: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, x_{t+1}): x_t ~ q(x_t | x_0), then one forward step x_{t+1} = √(1−β_{t+1}) x_t + √β_{t+1} ε′."""
        x_t = self.q_sample(x_0, t, noise)
        return x_t, self.q_step(x_t, t, noise_next)

    def q_step(self, x_t: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """One forward step x_{t+1} ~ q(x_{t+1} | x_t) (SIDDM's forward kernel)."""
        return _per_sample(self.step_a, t + 1, x_t) * x_t + _per_sample(self.step_sigma, t + 1, x_t) * noise

    def posterior_mean(self, x_0: Tensor, x_t_plus_one: Tensor, t: Tensor) -> Tensor:
        c1 = _per_sample(self.posterior_mean_coef1, t, x_0)
        c2 = _per_sample(self.posterior_mean_coef2, t, x_0)
        return c1 * x_0 + c2 * x_t_plus_one

    def sample_posterior(self, x_0: Tensor, x_t_plus_one: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_{t+1}, x̂_0); no noise at t = 0, std = exp(½ log σ²) as the reference computes it."""
        log_var = _per_sample(self.posterior_log_variance_clipped, t, x_0)
        nonzero = (t != 0).to(x_0.dtype).view(-1, *([1] * (x_0.dim() - 1)))
        return self.posterior_mean(x_0, x_t_plus_one, t) + nonzero * torch.exp(0.5 * log_var) * noise


class SamplingChain(nn.Module):
    """The whole T-step DDGAN sampler as one module: (x_T, z, noise) -> x_0 in [-1, 1].

    All randomness is an input (z: (T, B, nz), noise: (T, B, C, H, W), step k uses z[k] and noise[k] for the
    transition at t = T-1-k) so any backend can run it and a seed fixes the image.
    """

    def __init__(self, generator: nn.Module, config: DiffusionConfig) -> None:
        super().__init__()
        self.generator = generator
        self.num_timesteps = config.num_timesteps
        schedule = DiffusionSchedule(config)
        self.coef1 = [float(v) for v in schedule.posterior_mean_coef1]
        self.coef2 = [float(v) for v in schedule.posterior_mean_coef2]
        self.std = [float(v) for v in torch.exp(0.5 * schedule.posterior_log_variance_clipped)]

    def forward(self, x_T: Tensor, z: Tensor, noise: Tensor) -> Tensor:
        x = x_T
        batch = x_T.shape[0]
        for k in range(self.num_timesteps):
            t = self.num_timesteps - 1 - k
            t_index = torch.full((batch,), t, dtype=torch.long, device=x_T.device)
            x_0 = self.generator(x, t_index, z[k])
            mean = self.coef1[t] * x_0 + self.coef2[t] * x
            x = mean + self.std[t] * noise[k] if t != 0 else mean
        return x
