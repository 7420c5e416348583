"""The 2-D 25-Gaussian toy study: GAN vs DDGAN vs SIDDM on the PacGAN grid, with PacGAN's metrics.

Data (PacGAN protocol, siddm-notes §2.3): means {-4,-2,0,2,4}², isotropic σ = 0.05, 100,000 fixed training points,
2,500 generated samples scored. The diffusion variants run DDGAN's discrete VP schedule (`DiffusionSchedule`) on
x / 4 so the grid lies in [-1, 1] like image data; samples are scaled back before scoring.

Objectives (one small MLP generator G(x_{t+1}, t, z) -> x̂_0 for all three, sampled through DDGAN's chain):
- `gan`: T = 1 plain GAN. G maps (ε, z) ~ N(0, I) to x; D(x) is unconditional.
- `ddgan`: D(x_t, x_{t+1}, t) on the joint, real x_t ~ q(x_t | x_0) vs fake x'_t ~ q(x_t | x_{t+1}, x̂_0)
  (DDGAN Eq. 4-5), non-saturating softplus losses, R1 on real x_t.
- `siddm`: D(x_t, t) on the marginal only, plus the auxiliary-forward-diffusion term
  KL(p_θ(x_{t+1} | x'_t) ‖ q(x_{t+1} | x'_t)) with its entropy estimated by a conditional-estimator head C of D
  (siddm-notes §1.3-1.4; the Gaussian cross-entropy is weighted 1/(2β_{t+1}) as in the exact KL), and D's
  denoising regulariser ‖r(x_t, t) − x_0‖² on real samples instead of R1.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ddgan.model.checkpoint import atomic_write_bytes
from ddgan.model.config import ConfigError, DictConfig, DiffusionConfig
from ddgan.model.diffusion import DiffusionSchedule, SamplingChain
from ddgan.training import losses
from ddgan.training.discriminator import DiscriminatorOutput
from ddgan.training.evaluation import frechet_distance, kl_to_uniform

logger = logging.getLogger(__name__)

OBJECTIVES = ("gan", "ddgan", "siddm")
GRID_VALUES = (-4.0, -2.0, 0.0, 2.0, 4.0)
GRID_STD = 0.05
DATA_SCALE = 4.0  # diffusion runs on x / 4, so the grid spans [-1, 1] like images in DDGAN
QUALITY_RADIUS = 3.0  # in units of σ (PacGAN's "high quality" / "mode covered" threshold)


def grid_means() -> np.ndarray:
    """The 25 mode centres, shape (25, 2), row-major over (x, y)."""
    return np.array([(x, y) for x in GRID_VALUES for y in GRID_VALUES], dtype=np.float64)


def sample_grid(n: int, generator: torch.Generator) -> Tensor:
    """n points from the uniform 25-Gaussian mixture, float32 (n, 2)."""
    means = torch.from_numpy(grid_means()).float()
    modes = torch.randint(0, len(means), (n,), generator=generator)
    return means[modes] + GRID_STD * torch.randn(n, 2, generator=generator)


# ---------------------------------------------------------------- metrics (PacGAN Table 1)


@dataclass(frozen=True)
class GridMetrics(DictConfig):
    modes_covered: int  # modes with at least one sample within 3σ
    high_quality: float  # share of samples within 3σ of their nearest mode
    reverse_kl: float  # KL(p̂ ‖ U_25), p̂ = nearest-mode histogram of the high-quality samples
    frechet_2d: float  # Fréchet distance of Gaussian fits: samples vs the true mixture's moments


def mixture_moments() -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the true mixture: 0 and (mean of squared grid values + σ²)·I."""
    variance = float(np.mean(np.square(GRID_VALUES))) + GRID_STD**2
    return np.zeros(2), variance * np.eye(2)


def grid_metrics(samples: np.ndarray) -> GridMetrics:
    """Score (N, 2) samples on the original (unscaled) grid."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != 2 or len(samples) == 0:
        raise ValueError(f"expected samples of shape (N, 2), got {samples.shape}")
    means = grid_means()
    distances = np.linalg.norm(samples[:, None, :] - means[None, :, :], axis=2) / GRID_STD
    nearest = distances.argmin(axis=1)
    good = distances[np.arange(len(samples)), nearest] < QUALITY_RADIUS
    counts = np.bincount(nearest[good], minlength=len(means))
    reverse_kl = kl_to_uniform(counts) if counts.sum() else math.nan
    true_mean, true_cov = mixture_moments()
    finite = samples[np.all(np.isfinite(samples), axis=1)]
    if len(finite) > 2:
        fd = frechet_distance(finite.mean(0), np.cov(finite, rowvar=False), true_mean, true_cov)
    else:
        fd = math.nan
    return GridMetrics(int((counts > 0).sum()), float(good.mean()), reverse_kl, float(fd))


# ---------------------------------------------------------------- networks


class ToyGenerator(nn.Module):
    """x̂_0 = G(x_{t+1}, t, z): an MLP with a learned step embedding and a linear skip from x_{t+1}."""

    def __init__(self, num_timesteps: int, nz: int, hidden: int, embed_dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_timesteps, embed_dim)
        self.body = nn.Sequential(
            nn.Linear(2 + embed_dim + nz, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
        )
        self.head = nn.Linear(hidden + 2, 2)

    def forward(self, x_t_plus_one: Tensor, t: Tensor, z: Tensor) -> Tensor:
        h = self.body(torch.cat([x_t_plus_one, self.embed(t), z], dim=1))
        return self.head(torch.cat([h, x_t_plus_one], dim=1))


class ToyDiscriminator(nn.Module):
    """D(x_t, [x_{t+1}], t): a LeakyReLU MLP with a logit head and, for SIDDM, the r (x_0) and C (x_{t+1}) heads."""

    def __init__(
        self,
        num_timesteps: int,
        hidden: int,
        conditional: bool,
        extra_heads: bool,
        input_gain: float = 1.0,
        embed_dim: int = 32,
    ):
        super().__init__()
        self.conditional = conditional
        self.input_gain = input_gain
        self.embed = nn.Embedding(num_timesteps, embed_dim)
        in_features = 2 + (2 if conditional else 0) + embed_dim
        self.trunk = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
        )
        self.logit = nn.Linear(hidden, 1)
        self.denoise = nn.Linear(hidden, 2) if extra_heads else None  # r(x_t, t) -> x_0
        self.forward_estimate = nn.Linear(hidden, 2) if extra_heads else None  # C(x'_t, t) -> x_{t+1}

    def forward(self, x_t: Tensor, t: Tensor, x_t_plus_one: Tensor | None = None) -> DiscriminatorOutput:
        if (x_t_plus_one is not None) != self.conditional:
            raise ValueError("a conditional discriminator needs x_{t+1}, an unconditional one takes none")
        parts = [x_t] if x_t_plus_one is None else [x_t, x_t_plus_one]
        features = self.trunk(torch.cat([*(self.input_gain * part for part in parts), self.embed(t)], dim=1))
        if self.denoise is None or self.forward_estimate is None:
            return DiscriminatorOutput(self.logit(features).squeeze(1))
        return DiscriminatorOutput(
            self.logit(features).squeeze(1), self.denoise(features), self.forward_estimate(features)
        )


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class ToyConfig(DictConfig):
    objective: str = "ddgan"
    num_timesteps: int = 4
    seed: int = 0
    iterations: int = 20_000
    batch_size: int = 256
    hidden: int = 128
    nz: int = 2
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    adam_betas: tuple[float, float] = (0.5, 0.9)
    r1_gamma: float = 0.01  # DDGAN / GAN; in the scaled space
    lambda_afd: float = 1.0  # SIDDM
    lambda_reg: float = 1.0  # SIDDM's denoising regulariser
    d_input_gain: float = 4.0  # D sees gain · x: resolves the σ = 0.05 / 4 modes with unit-scale weights
    num_train_points: int = 100_000
    num_eval_samples: int = 2_500

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "gan" and self.num_timesteps != 1:
            raise ConfigError("the plain GAN is the T = 1 baseline: use --num-timesteps 1")
        if not 1 <= self.num_timesteps <= 1000 or self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("need 1 <= num_timesteps <= 1000, iterations >= 1 and batch_size >= 1")


class ToyModel(nn.Module):
    """G, D and the schedule of one toy run; `step()` does one D update then one G update."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.schedule = DiffusionSchedule(DiffusionConfig(num_timesteps=config.num_timesteps))
        siddm = config.objective == "siddm"
        self.generator = ToyGenerator(config.num_timesteps, config.nz, config.hidden)
        self.discriminator = ToyDiscriminator(
            config.num_timesteps,
            config.hidden,
            conditional=config.objective == "ddgan",
            extra_heads=siddm,
            input_gain=config.d_input_gain,
        )
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr_g, betas=config.adam_betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=config.adam_betas)
        # cosine decay of both learning rates over the run, as DDGAN's recipe (eta_min 1e-5)
        self.lr_schedules = [
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.iterations, eta_min=1e-5)
            for opt in (self.opt_g, self.opt_d)
        ]

        r1_gamma = 0.0 if config.objective == "siddm" else config.r1_gamma  # SIDDM's regulariser replaces R1
        self.weights = losses.LossWeights(r1_gamma, config.lambda_afd, config.lambda_reg, reduction="sum")

    def _transition(self, x_0: Tensor, rng: torch.Generator) -> losses.Transition:
        """The real pair and G's x'_t; every draw from `rng` in a fixed order (t, z, then the three noises)."""
        n = len(x_0)
        t = torch.randint(0, self.config.num_timesteps, (n,), generator=rng)
        z = torch.randn(n, self.config.nz, generator=rng)
        if self.config.objective == "gan":  # x_t is the data, G's input x_{t+1} pure noise, no posterior step
            x_t_plus_one = torch.randn(n, 2, generator=rng)
            return losses.Transition(t, x_0, x_t_plus_one, self.generator(x_t_plus_one, t, z))
        noise, noise_next, posterior_noise = (torch.randn(n, 2, generator=rng) for _ in range(3))
        return losses.transition(
            self.generator, self.schedule, x_0, losses.StepNoise(t, noise, noise_next, z, posterior_noise)
        )

    def step(self, x_0: Tensor, rng: torch.Generator) -> dict[str, float]:
        """One D update then one G update (fresh t, noise and latents), the objectives of `training.losses`."""
        d = self.discriminator
        with torch.no_grad():
            transition = self._transition(x_0, rng)
        loss_d, _ = losses.discriminator_loss(d, transition, x_0, self.weights, apply_r1=self.weights.r1_gamma > 0)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        d.requires_grad_(False)
        loss_g, _ = losses.generator_loss(d, self._transition(x_0, rng), self.schedule, self.weights)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        d.requires_grad_(True)
        for schedule in self.lr_schedules:
            schedule.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    @torch.no_grad()
    def sample(self, n: int, rng: torch.Generator) -> Tensor:
        """n points on the original grid scale, through DDGAN's T-step chain (x_T ~ N(0, I))."""
        steps = self.config.num_timesteps
        x_T = torch.randn(n, 2, generator=rng)
        z = torch.randn(steps, n, self.config.nz, generator=rng)
        noise = torch.randn(steps, n, 2, generator=rng)
        if self.config.objective == "gan":
            return DATA_SCALE * self.generator(x_T, torch.zeros(n, dtype=torch.long), z[0])
        chain = SamplingChain(self.generator, DiffusionConfig(num_timesteps=steps))
        return DATA_SCALE * chain(x_T, z, noise)


def train_toy(
    config: ToyConfig, log_every: int = 0, progress: bool = False
) -> tuple[ToyModel, GridMetrics, list[dict[str, float]]]:
    """Train one toy run from `config.seed` and score `config.num_eval_samples` samples."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)  # weight initialisation
    model = ToyModel(config)
    data_rng = torch.Generator().manual_seed(config.seed)
    train_rng = torch.Generator().manual_seed(config.seed + 1)
    eval_rng = torch.Generator().manual_seed(config.seed + 2)
    data = sample_grid(config.num_train_points, data_rng) / DATA_SCALE
    history = []
    label = f"{config.objective} T={config.num_timesteps} seed={config.seed}"
    for iteration in tqdm(range(config.iterations), desc=label, disable=not progress, dynamic_ncols=True):
        batch = data[torch.randint(0, len(data), (config.batch_size,), generator=train_rng)]
        losses = model.step(batch, train_rng)
        if log_every and (iteration + 1) % log_every == 0:
            history.append({"iteration": iteration + 1, **losses})
    samples = model.sample(config.num_eval_samples, eval_rng).numpy()
    return model, grid_metrics(samples), history


# ---------------------------------------------------------------- the study (all configurations × seeds)

SWEEP_CONFIGS = [("gan", 1)] + [(objective, steps) for objective in ("ddgan", "siddm") for steps in (1, 2, 4, 8, 16)]


def run_sweep(
    out: Path,
    seeds: Iterable[int],
    objectives: Iterable[str] = OBJECTIVES,
    steps_list: Iterable[int] = (1, 2, 4, 8, 16),
    progress: bool = False,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Train every (objective, T) × seed, appending each result to `out` (JSON list); finished runs are skipped.

    `objectives` and `steps_list` restrict the sweep, so several processes can share it (one output file each).
    """
    runs: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["objective"], r["steps"], r["seed"]) for r in runs}
    seeds = list(seeds)
    selected = [c for c in SWEEP_CONFIGS if c[0] in set(objectives) and c[1] in set(steps_list)]
    for objective, steps in selected:
        for seed in seeds:
            if (objective, steps, seed) in done:
                continue
            config = ToyConfig(objective=objective, num_timesteps=steps, seed=seed, **overrides)
            start = time.process_time()
            _, metrics, _ = train_toy(config, progress=progress)
            runs.append(
                {
                    "objective": objective,
                    "steps": steps,
                    "seed": seed,
                    **metrics.to_dict(),
                    "cpu_seconds": round(time.process_time() - start, 1),
                    "config": config.to_dict(),
                }
            )
            logger.info("%s T=%d seed=%d: %s", objective, steps, seed, metrics)
            atomic_write_bytes(out, (json.dumps(runs, indent=1) + "\n").encode())
    return runs


def _mean_se(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    se = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else math.nan
    return f"{array.mean():.2f} ± {se:.2f}"


def format_table(runs: list[dict[str, Any]]) -> str:
    """Markdown table, mean ± standard error over seeds, one row per (objective, T)."""
    lines = [
        "| objective | T | seeds | modes (of 25) | high-quality % | reverse KL | FD-2D | CPU s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for objective, steps in SWEEP_CONFIGS:
        group = [r for r in runs if r["objective"] == objective and r["steps"] == steps]
        if not group:
            continue
        lines.append(
            f"| {objective} | {steps} | {len(group)} | {_mean_se([r['modes_covered'] for r in group])} | "
            f"{_mean_se([100 * r['high_quality'] for r in group])} | {_mean_se([r['reverse_kl'] for r in group])} | "
            f"{_mean_se([r['frechet_2d'] for r in group])} | {np.mean([r['cpu_seconds'] for r in group]):.0f} |"
        )
    return "\n".join(lines)
