"""DDGAN and SIDDM training objectives, written once for the image trainer and the 2-D toy study.

Every random draw arrives in a `StepNoise`; a `Transition` holds one batch's real pair (x_t, x_{t+1}) and the
generator's x'_t. The losses take any discriminator that returns a `DiscriminatorOutput` and says whether it is
`conditional` (judges the pair) or not (the marginal); SIDDM's discriminators also return the x_0 and x_{t+1}
estimates. Which terms apply follows from that, so DDGAN, SIDDM and the toy's plain GAN share one D loss and
one G loss.

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

Squared errors reduce over a sample's values by `LossWeights.reduction`: "mean" per pixel for images (the
paper's normalisation is not known; λ_AFD is then rescaled by 1/(C·H·W)), "sum" over a 2-D point's coordinates
in the toy study.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddgan.model.diffusion import DiffusionSchedule
from ddgan.training.discriminator import DiscriminatorOutput


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
    seed: int, batch: int, image_shape: tuple[int, ...], nz: int, num_timesteps: int, device: torch.device
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


@dataclass
class Transition:
    """One batch's denoising step: real x_t ~ q(x_t | x_0), x_{t+1} ~ q(x_{t+1} | x_t), fake x'_t from G."""

    t: Tensor
    x_t: Tensor
    x_t_plus_one: Tensor
    x_t_fake: Tensor


def transition(generator: nn.Module, schedule: DiffusionSchedule, x_0: Tensor, noise: StepNoise) -> Transition:
    """The real pair from the forward process and x'_t ~ q(x_t | x_{t+1}, x̂_0 = G(x_{t+1}, t, z)) (DDGAN Eq. 4-5)."""
    t = noise.t
    x_t, x_t_plus_one = schedule.q_sample_pairs(x_0, t, noise.noise, noise.noise_next)
    x_0_pred = generator(x_t_plus_one, t, noise.z)
    return Transition(t, x_t, x_t_plus_one, schedule.sample_posterior(x_0_pred, x_t_plus_one, t, noise.posterior_noise))


class TimeDiscriminator(Protocol):
    """D(x_t, t[, x_{t+1}]): the image discriminator (`training.discriminator`) and the toy's MLP."""

    conditional: bool

    def __call__(self, x_t: Tensor, t: Tensor, x_t_plus_one: Tensor | None = None) -> DiscriminatorOutput: ...


@dataclass(frozen=True)
class LossWeights:
    r1_gamma: float = 0.0
    lambda_afd: float = 1.0
    denoise_weight: float = 1.0
    reduction: str = "mean"  # squared errors per sample: "mean" over pixels (images) or "sum" (2-D points)

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")


def _per_sample(values: Tensor, reduction: str) -> Tensor:
    """(B, ...) -> (B,): the mean or sum over each sample's values."""
    flat = values.float().flatten(1)
    return flat.mean(1) if reduction == "mean" else flat.sum(1)


def r1_penalty(logit: Tensor, x_real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018) without its γ/2 factor: mean_i ‖∇_x D(x_i)‖² on real samples."""
    (grad,) = torch.autograd.grad(logit.float().sum(), x_real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def discriminator_loss(
    discriminator: TimeDiscriminator, step: Transition, x_0: Tensor, weights: LossWeights, apply_r1: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """D step: softplus(−D(x_t)) + softplus(D(x'_t)) [+ SIDDM heads] [+ γ/2·R1 on real x_t].

    DDGAN: D(x_t, t, x_{t+1}) on pairs. SIDDM (siddm-notes §1.4), D(x_t, t) on the marginal plus
      * the denoising regulariser (the paper's UNet-discriminator term): ‖r(x_t, t) − x_0‖² on *real* x_t only;
      * the conditional estimator fit (the max over ψ that estimates −H(p) in the AFD KL):
        λ_AFD·‖c(sg(x'_t), t) − x_{t+1}‖² on fake pairs.
    `step.x_t_fake` must not carry G's graph (build the transition under no_grad). As the reference, R1 is not
    multiplied by the lazy interval (StyleGAN2 would multiply it); SIDDM recipes turn it off (γ = 0).
    """
    condition = step.x_t_plus_one if discriminator.conditional else None
    x_t = step.x_t.detach().requires_grad_(apply_r1)
    real = discriminator(x_t, step.t, condition)
    loss_real = F.softplus(-real.logit.float()).mean()
    fake = discriminator(step.x_t_fake, step.t, condition)
    loss_fake = F.softplus(fake.logit.float()).mean()
    loss = loss_real + loss_fake
    stats = {"d_real": loss_real.detach(), "d_fake": loss_fake.detach()}
    if real.x_0 is not None and fake.x_t_plus_one is not None:
        denoise = _per_sample((real.x_0.float() - x_0.float()).square(), weights.reduction).mean()
        estimator = _per_sample((fake.x_t_plus_one.float() - step.x_t_plus_one.float()).square(), weights.reduction)
        loss = loss + weights.denoise_weight * denoise + weights.lambda_afd * estimator.mean()
        stats.update(d_denoise=denoise.detach(), d_afd_estimator=estimator.mean().detach())
    if apply_r1 and weights.r1_gamma > 0:
        r1 = r1_penalty(real.logit, x_t)
        loss = loss + weights.r1_gamma / 2 * r1
        stats["r1"] = r1.detach()
    return loss, stats


def afd_kl(
    schedule: DiffusionSchedule, step: Transition, x_t_plus_one_estimate: Tensor, reduction: str
) -> tuple[Tensor, Tensor]:
    """Per-sample AFD = KL(p_θ(x_{t+1} | x'_t) ‖ q(x_{t+1} | x'_t)), q(x_{t+1} | x_t) = N(√(1−β_{t+1}) x_t, β_{t+1} I):

      H(p, q) ≈ ‖x_{t+1} − √(1−β_{t+1}) x'_t‖² / (2β_{t+1})                (explicit Gaussian cross-entropy)
      −H(p)  ≈ −‖x_{t+1} − c(x'_t, t)‖² / (2β_{t+1})                       (estimator with σ² = β_{t+1})

    Returns (AFD, its cross-entropy part), each (B,). Differences from the paper as reconstructed: σ² of the
    estimator fixed to β_{t+1}, constants dropped; the released MoG script instead uses weight 1 and omits the
    entropy term. Gradients reach x'_t through c (D's parameters are frozen, not x'_t).
    """
    broadcast = (-1, *([1] * (step.x_t_fake.dim() - 1)))
    beta = schedule.betas[step.t + 1].float().view(broadcast)
    step_a = schedule.step_a[step.t + 1].float().view(broadcast)
    x_t_plus_one, x_t_fake = step.x_t_plus_one.float(), step.x_t_fake.float()
    cross_entropy = (x_t_plus_one - step_a * x_t_fake).square() / (2 * beta)
    entropy = (x_t_plus_one - x_t_plus_one_estimate.float()).square() / (2 * beta)
    return _per_sample(cross_entropy - entropy, reduction), _per_sample(cross_entropy, reduction)


def generator_loss(
    discriminator: TimeDiscriminator, step: Transition, schedule: DiffusionSchedule, weights: LossWeights
) -> tuple[Tensor, dict[str, Tensor]]:
    """G step (non-saturating): softplus(−D(x'_t)) on the pair (DDGAN) or the marginal, + λ_AFD·AFD for SIDDM."""
    fake = discriminator(step.x_t_fake, step.t, step.x_t_plus_one if discriminator.conditional else None)
    adversarial = F.softplus(-fake.logit.float()).mean()
    if fake.x_t_plus_one is None:
        return adversarial, {"g_adv": adversarial.detach()}
    afd, cross_entropy = afd_kl(schedule, step, fake.x_t_plus_one, weights.reduction)
    loss = adversarial + weights.lambda_afd * afd.mean()
    return loss, {
        "g_adv": adversarial.detach(),
        "g_afd": afd.mean().detach(),
        "g_afd_cross_entropy": cross_entropy.mean().detach(),
    }
