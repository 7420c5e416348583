"""DDGAN and SIDDM training objectives; every random draw arrives in a `StepNoise`.

Index convention (as model/diffusion.py): the generator denoises x_{t+1} → x_t with t ∈ {0..T-1}; DDGAN's paper
writes this transition x_t → x_{t-1}, so its x_{t-1} is our x_t.

DDGAN (Xiao et al. 2022, §3.3 adversarial objective; recipe in ddgan-spec §5): the discriminator
D(x_t, t, x_{t+1}) judges denoising pairs with the non-saturating softplus loss, plus R1 on real x_t.

SIDDM (Xu et al. 2023). The image code was never released and the paper's equation numbers were not available
to us: each term below names the formula of the reconstruction (siddm-notes §1.3-1.4) it implements. The same
joint q(x_t, x_{t+1}) is factorised as marginal × forward kernel, and matched by
  * an adversarial term on the marginal, D(x_t, t), real x_t ~ q(x_t | x_0) vs fake x'_t ~ q(x_t | x_{t+1}, x̂_0);
  * the auxiliary-forward-diffusion (AFD) term KL(p_θ(x_{t+1} | x'_t) ‖ q(x_{t+1} | x'_t)) = H(p, q) − H(p): the
    cross-entropy is explicit (q is Gaussian); −H(p) is estimated by a conditional estimator c(x'_t, t) ≈ x_{t+1}
    that D's trunk shares and trains (a min-max game, as the paper does);
  * the discriminator's denoising regulariser r(x_t, t) ≈ x_0 trained on real noisy samples (UNet-GAN decoder).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddgan.model.diffusion import DiffusionSchedule


@dataclass
class StepNoise:
    """All randomness of one D or G step: t ~ U{0..T-1}, ε for x_t, ε′ for x_{t+1}, z, ξ for the posterior."""

    t: Tensor
    noise: Tensor
    noise_next: Tensor
    z: Tensor
    posterior_noise: Tensor


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, rank, step, purpose): training randomness is a pure function of the step."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw_step_noise(
    seed: int, batch: int, image_shape: tuple[int, int, int], nz: int, num_timesteps: int, device: torch.device
) -> StepNoise:
    """Draw one step's noise from a generator seeded by `seed`, in a fixed order, on the CPU (device-independent)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, *image_shape)
    t = torch.randint(0, num_timesteps, (batch,), generator=generator)
    noise = torch.randn(shape, generator=generator)
    noise_next = torch.randn(shape, generator=generator)
    z = torch.randn((batch, nz), generator=generator)
    posterior_noise = torch.randn(shape, generator=generator)
    return StepNoise(*(x.to(device, non_blocking=True) for x in (t, noise, noise_next, z, posterior_noise)))


def r1_penalty(logit: Tensor, x_real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018) without its γ/2 factor: mean_i ‖∇_x D(x_i)‖² on real samples."""
    (grad,) = torch.autograd.grad(logit.float().sum(), x_real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


@dataclass(frozen=True)
class LossWeights:
    r1_gamma: float = 0.0
    lambda_afd: float = 1.0
    denoise_weight: float = 1.0


def ddgan_discriminator_loss(
    generator: nn.Module,
    discriminator: nn.Module,
    schedule: DiffusionSchedule,
    x_0: Tensor,
    noise: StepNoise,
    weights: LossWeights,
    apply_r1: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DDGAN discriminator loss: softplus(−D(x_t, t, x_{t+1})) + softplus(D(x'_t, t, x_{t+1})) [+ γ/2·R1].

    As the reference, R1 is not multiplied by the lazy interval (StyleGAN2 would multiply it).
    """
    t = noise.t
    x_t, x_t_plus_one = schedule.q_sample_pairs(x_0, t, noise.noise, noise.noise_next)
    x_t = x_t.detach().requires_grad_(apply_r1)
    d_real = discriminator(x_t, t, x_t_plus_one).logit
    loss_real = F.softplus(-d_real.float()).mean()
    with torch.no_grad():  # the reference lets G's graph build here and discards those gradients
        x_0_pred = generator(x_t_plus_one, t, noise.z)
    x_t_fake = schedule.sample_posterior(x_0_pred, x_t_plus_one, t, noise.posterior_noise)
    d_fake = discriminator(x_t_fake, t, x_t_plus_one).logit
    loss_fake = F.softplus(d_fake.float()).mean()
    loss = loss_real + loss_fake
    stats = {"d_real": loss_real.detach(), "d_fake": loss_fake.detach()}
    if apply_r1 and weights.r1_gamma > 0:
        r1 = r1_penalty(d_real, x_t)
        loss = loss + weights.r1_gamma / 2 * r1
        stats["r1"] = r1.detach()
    return loss, stats


def ddgan_generator_loss(
    generator: nn.Module, discriminator: nn.Module, schedule: DiffusionSchedule, x_0: Tensor, noise: StepNoise
) -> tuple[Tensor, dict[str, Tensor]]:
    """DDGAN generator loss (non-saturating): softplus(−D(x'_t, t, x_{t+1})), x'_t ~ q(x_t | x_{t+1}, x̂_0)."""
    t = noise.t
    _, x_t_plus_one = schedule.q_sample_pairs(x_0, t, noise.noise, noise.noise_next)
    x_0_pred = generator(x_t_plus_one, t, noise.z)
    x_t_fake = schedule.sample_posterior(x_0_pred, x_t_plus_one, t, noise.posterior_noise)
    loss = F.softplus(-discriminator(x_t_fake, t, x_t_plus_one).logit.float()).mean()
    return loss, {"g_adv": loss.detach()}


def _pixel_mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample mean squared error over C·H·W (B,)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def siddm_discriminator_loss(
    generator: nn.Module,
    discriminator: nn.Module,
    schedule: DiffusionSchedule,
    x_0: Tensor,
    noise: StepNoise,
    weights: LossWeights,
    apply_r1: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """D step of SIDDM (siddm-notes §1.4): marginal GAN + λ_reg·denoising regulariser + λ_AFD·estimator fit.

    * marginal adversarial term (paper: D_adv(q(x_{t-1}) ‖ p_θ(x_{t-1}))): non-saturating softplus on D(x_t, t);
    * denoising regulariser (paper's UNet-discriminator regulariser): ‖r(x_t, t) − x_0‖² on *real* x_t only;
    * conditional estimator fit (the max over ψ that estimates −H(p) in the AFD KL): ‖c(sg(x'_t), t) − x_{t+1}‖²
      on fake pairs. Squared errors are per-pixel means (the paper's normalisation is not known).
    Optional R1 (off by default for SIDDM: the paper presents the regulariser as its replacement).
    """
    t = noise.t
    x_t, x_t_plus_one = schedule.q_sample_pairs(x_0, t, noise.noise, noise.noise_next)
    x_t = x_t.detach().requires_grad_(apply_r1)
    real = discriminator(x_t, t)
    loss_real = F.softplus(-real.logit.float()).mean()
    denoise = _pixel_mse(real.x_0, x_0).mean()
    with torch.no_grad():
        x_0_pred = generator(x_t_plus_one, t, noise.z)
    x_t_fake = schedule.sample_posterior(x_0_pred, x_t_plus_one, t, noise.posterior_noise)
    fake = discriminator(x_t_fake, t)
    loss_fake = F.softplus(fake.logit.float()).mean()
    estimator = _pixel_mse(fake.x_t_plus_one, x_t_plus_one).mean()
    loss = loss_real + loss_fake + weights.denoise_weight * denoise + weights.lambda_afd * estimator
    stats = {
        "d_real": loss_real.detach(),
        "d_fake": loss_fake.detach(),
        "d_denoise": denoise.detach(),
        "d_afd_estimator": estimator.detach(),
    }
    if apply_r1 and weights.r1_gamma > 0:
        r1 = r1_penalty(real.logit, x_t)
        loss = loss + weights.r1_gamma / 2 * r1
        stats["r1"] = r1.detach()
    return loss, stats


def siddm_generator_loss(
    generator: nn.Module,
    discriminator: nn.Module,
    schedule: DiffusionSchedule,
    x_0: Tensor,
    noise: StepNoise,
    weights: LossWeights,
) -> tuple[Tensor, dict[str, Tensor]]:
    """G step of SIDDM: softplus(−D(x'_t, t)) + λ_AFD · AFD.

    AFD = KL(p_θ(x_{t+1} | x'_t) ‖ q(x_{t+1} | x'_t)) per pixel, with q(x_{t+1} | x_t) = N(√(1−β_{t+1}) x_t, β_{t+1} I):
      H(p, q) ≈ ‖x_{t+1} − √(1−β_{t+1}) x'_t‖² / (2β_{t+1})                (explicit Gaussian cross-entropy)
      −H(p)  ≈ −‖x_{t+1} − c(x'_t, t)‖² / (2β_{t+1})                       (estimator with σ² = β_{t+1})
    Differences from the paper as reconstructed: per-pixel mean instead of a sum over pixels (λ_AFD is rescaled
    by 1/(C·H·W)), σ² of the estimator fixed to β_{t+1}, constants dropped. The released MoG script instead uses
    weight 1 and omits the entropy term. Gradients reach x'_t through c (D's parameters are frozen, not x'_t).
    """
    t = noise.t
    _, x_t_plus_one = schedule.q_sample_pairs(x_0, t, noise.noise, noise.noise_next)
    x_0_pred = generator(x_t_plus_one, t, noise.z)
    x_t_fake = schedule.sample_posterior(x_0_pred, x_t_plus_one, t, noise.posterior_noise)
    fake = discriminator(x_t_fake, t)
    adversarial = F.softplus(-fake.logit.float()).mean()
    beta_next = schedule.betas[t + 1].float()
    step_a = schedule.step_a[t + 1].view(-1, *([1] * (x_0.dim() - 1)))
    cross_entropy = _pixel_mse(x_t_plus_one, step_a * x_t_fake) / (2 * beta_next)
    negative_entropy = -_pixel_mse(x_t_plus_one, fake.x_t_plus_one) / (2 * beta_next)
    afd = (cross_entropy + negative_entropy).mean()
    loss = adversarial + weights.lambda_afd * afd
    return loss, {
        "g_adv": adversarial.detach(),
        "g_afd": afd.detach(),
        "g_afd_cross_entropy": cross_entropy.mean().detach(),
    }
