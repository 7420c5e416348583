"""The DDGAN / SIDDM training step, schedule, checkpoint/resume and export, on tiny configurations."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from ddgan.model.checkpoint import load_model
from ddgan.model.diffusion import SamplingChain
from ddgan.model.noise import chain_noise, image_seeds
from ddgan.training.datasets import ArrayImageDataset
from ddgan.training.trainer import Trainer
from tests.training._trainer_setup import (
    one_thread,  # noqa: F401 (the fixture below)
    state_digest,
    tiny_config,
    tiny_dataset,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path: Path, objective: str = "ddgan", **changes) -> Trainer:
    return Trainer(tiny_config(objective, **changes), tiny_dataset(), tmp_path / "run")


def _snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("G", trainer.generator), ("D", trainer.discriminator), ("EMA", trainer.ema)):
        for name, value in module.named_parameters():
            tensors[f"{prefix}.{name}"] = value.detach().clone()
        for name, value in module.named_buffers():
            tensors[f"{prefix}.buffer.{name}"] = value.detach().clone()
    for name, value in trainer.schedule.named_buffers():
        tensors[f"schedule.{name}"] = value.detach().clone()
    return tensors


@pytest.mark.parametrize("objective", ["ddgan", "siddm"])
def test_a_step_updates_g_d_and_the_ema_and_nothing_else(tmp_path: Path, objective: str) -> None:
    trainer = _trainer(tmp_path, objective)
    x_0 = next(trainer.stream.batches(0))
    before = _snapshot(trainer)
    stats = trainer.train_step(x_0)
    after = _snapshot(trainer)

    changed = {name for name in before if not torch.equal(before[name], after[name])}
    params = {n for n in before if ".buffer." not in n and not n.startswith("schedule.")}
    assert changed <= params, f"non-parameters changed: {sorted(changed - params)}"
    for prefix in ("G.", "D.", "EMA."):
        group = {n for n in params if n.startswith(prefix)}
        assert len(changed & group) >= 0.9 * len(group), f"{prefix} barely updated"
    # EMA: ema' = d·ema + (1 − d)·θ' with the EMA starting equal to θ.
    decay = trainer.config.ema_decay
    for name, value in trainer.generator.named_parameters():
        expected = decay * before[f"EMA.{name}"] + (1 - decay) * value.detach()
        torch.testing.assert_close(after[f"EMA.{name}"], expected, rtol=1e-6, atol=1e-7)
    assert trainer.step == 1
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert all(p.requires_grad for p in trainer.discriminator.parameters())


def test_r1_applies_on_its_lazy_schedule(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, lazy_reg=3)
    batches = trainer.stream.batches(0)
    with_r1 = [step for step in range(7) if "r1" in trainer.train_step(next(batches))]
    assert with_r1 == [0, 3, 6]


def test_r1_is_the_mean_squared_input_gradient_norm() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    logit = (x**2).sum(1)  # ∇ = 2x
    from ddgan.training.losses import r1_penalty

    expected = (4 * x.detach() ** 2).sum(1).mean()
    torch.testing.assert_close(r1_penalty(logit, x), expected)


def test_learning_rates_follow_a_per_epoch_cosine(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, num_epochs=4, lr_g=1e-3, lr_d=5e-4, lr_min=1e-5)
    per_epoch = trainer.stream.steps_per_epoch
    assert trainer.learning_rates(0) == trainer.learning_rates(per_epoch - 1) == (1e-3, 5e-4)
    lr_g, lr_d = trainer.learning_rates(2 * per_epoch)  # half way: the mean of start and floor
    assert lr_g == pytest.approx((1e-3 + 1e-5) / 2) and lr_d == pytest.approx((5e-4 + 1e-5) / 2)
    assert trainer.learning_rates(3 * per_epoch)[0] == pytest.approx(
        1e-5 + (1e-3 - 1e-5) * (1 + math.cos(0.75 * math.pi)) / 2
    )


def _grads(module: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for n, p, g in zip(names, params, grads, strict=True)}


def _norm(grads: dict[str, torch.Tensor], prefix: str = "") -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for n, g in grads.items() if n.startswith(prefix)))


def test_each_siddm_term_contributes_gradient(tmp_path: Path) -> None:
    from ddgan.training import losses

    trainer = _trainer(tmp_path, "siddm")
    G, D, schedule = trainer.generator, trainer.discriminator, trainer.schedule
    x_0 = next(trainer.stream.batches(0))
    noise = losses.draw_step_noise(3, 4, (1, 32, 32), 4, 4, torch.device("cpu"))
    only = {
        "adversarial": losses.LossWeights(lambda_afd=0.0, denoise_weight=0.0),
        "denoise": losses.LossWeights(lambda_afd=0.0, denoise_weight=1.0),
        "afd": losses.LossWeights(lambda_afd=1.0, denoise_weight=0.0),
    }
    with torch.no_grad():
        transition = losses.transition(G, schedule, x_0, noise)
    base = _grads(D, losses.discriminator_loss(D, transition, x_0, only["adversarial"], False)[0])
    for term in ("denoise", "afd"):
        full = _grads(D, losses.discriminator_loss(D, transition, x_0, only[term], False)[0])
        delta = {n: full[n] - base[n] for n in full}
        assert _norm(delta, "dense_out") > 0, f"D's {term} term gives no gradient to the dense heads"
        assert _norm(delta, "blocks") > 0, f"D's {term} term gives no gradient to the shared trunk"
    assert _norm(base, "end_linear") > 0 and _norm(base, "dense_out") == 0

    for p in D.parameters():
        p.requires_grad_(False)
    adv = _grads(
        G, losses.generator_loss(D, losses.transition(G, schedule, x_0, noise), schedule, only["adversarial"])[0]
    )
    with_afd = _grads(G, losses.generator_loss(D, losses.transition(G, schedule, x_0, noise), schedule, only["afd"])[0])
    assert _norm(adv) > 0
    assert _norm({n: with_afd[n] - adv[n] for n in adv}) > 0


def test_afd_cross_entropy_is_one_half_per_pixel_for_true_pairs() -> None:
    """With an oracle G (x̂_0 = x_0), (x'_t, x_{t+1}) is a real pair: ‖x_{t+1} − √(1−β) x'_t‖²/(2β) = ε²/2 → 1/2."""
    from ddgan.model.diffusion import DiffusionSchedule
    from ddgan.training import losses
    from ddgan.training.discriminator import Discriminator
    from ddgan.training.train_config import DiscriminatorConfig

    x_0 = torch.rand(64, 1, 32, 32) * 2 - 1

    class Oracle(torch.nn.Module):
        def forward(self, x, t, z):
            return x_0

    schedule = DiffusionSchedule(tiny_config().model.diffusion)
    D = Discriminator(DiscriminatorConfig(ngf=2, t_emb_dim=8, conditional=False, dense_heads=True), 1)
    noise = losses.draw_step_noise(11, 64, (1, 32, 32), 4, 4, torch.device("cpu"))
    transition = losses.transition(Oracle(), schedule, x_0, noise)
    _, stats = losses.generator_loss(D, transition, schedule, losses.LossWeights())
    assert float(stats["g_afd_cross_entropy"]) == pytest.approx(0.5, abs=0.01)


def _fit(run: Path, max_steps: int, resume: bool = False, dataset: ArrayImageDataset | None = None) -> Trainer:
    trainer = Trainer(tiny_config(max_steps=max_steps, checkpoint_every=2), dataset or tiny_dataset(), run)
    if resume:
        assert trainer.resume()
    trainer.fit("test", progress=False)
    return trainer


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "straight", max_steps=5)  # 4 steps per epoch: crosses an epoch boundary
    _fit(tmp_path / "split", max_steps=3)
    resumed = _fit(tmp_path / "split", max_steps=5, resume=True)
    assert resumed.step == straight.step == 5
    for a, b in ((straight.generator, resumed.generator), (straight.discriminator, resumed.discriminator)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    assert state_digest(straight.ema) == state_digest(resumed.ema)
    for key in ("exp_avg", "exp_avg_sq"):
        for sa, sb in zip(straight.opt_g.state.values(), resumed.opt_g.state.values(), strict=True):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-6)


class _SignalAt(ArrayImageDataset):
    """Sends a signal to this process when the n-th batch is gathered (e.g. a scheduler pre-empting the job)."""

    def __init__(self, base: ArrayImageDataset, at_call: int, signum: int = signal.SIGTERM) -> None:
        super().__init__(base.images)
        self.calls, self.at_call, self.signum = 0, at_call, signum

    def uint8_batch(self, indices):
        self.calls += 1
        if self.calls == self.at_call:
            os.kill(os.getpid(), self.signum)
        return super().uint8_batch(indices)


def test_sigusr1_checkpoints_and_exports_without_stopping(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(max_steps=3), _SignalAt(tiny_dataset(), at_call=2, signum=signal.SIGUSR1), run)
    assert trainer.fit("test", export_dir=tmp_path / "exported", progress=False) == "finished"
    assert trainer.step == 3
    steps = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert steps == ["step_00000002", "step_00000003"]  # on demand at step 2, then at the end
    assert load_model(tmp_path / "exported")[0].trained_on.endswith("3 steps, EMA 0.9")


def test_sigterm_checkpoints_exports_and_stops(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(max_steps=50), _SignalAt(tiny_dataset(), at_call=2), run)
    previous = signal.getsignal(signal.SIGTERM)
    assert trainer.fit("test", progress=False) == "SIGTERM"
    assert trainer.step == 2  # the interrupted step completes, then the run stops
    assert signal.getsignal(signal.SIGTERM) is previous
    assert (run / "checkpoints" / "step_00000002" / "state.safetensors").is_file()
    assert (run / "samples" / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The export is a model directory the server loads, holding the EMA weights.
    config, generator = load_model(run / "model")
    assert "test" in config.trained_on and config.generator == trainer.config.model.generator
    noise = chain_noise(image_seeds(5, 2), config.image_shape, config.generator.nz, 4)
    with torch.no_grad():
        exported = SamplingChain(generator, config.diffusion)(*noise)
        ema = SamplingChain(trainer.ema, config.diffusion)(*noise)
    torch.testing.assert_close(exported, ema, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("objective", ["ddgan", "siddm"])
def test_bf16_autocast_steps_on_cuda(tmp_path: Path, objective: str) -> None:
    from ddgan.training.distributed import DistContext

    ctx = DistContext(device=torch.device("cuda", 0))
    trainer = Trainer(tiny_config(objective), tiny_dataset(), tmp_path / "run", ctx)
    assert trainer.use_bf16
    batches = trainer.stream.batches(0)
    for _ in range(3):
        stats = trainer.train_step(next(batches).cuda())
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())  # autocast keeps fp32 master weights


def test_explicit_bf16_autocasts_on_the_cpu_and_auto_stays_fp32(tmp_path: Path) -> None:
    from ddgan.training.distributed import DistContext

    ctx = DistContext(device=torch.device("cpu"))
    assert not Trainer(tiny_config(), tiny_dataset(), tmp_path / "auto", ctx).use_bf16  # auto on the CPU: fp32
    trainer = Trainer(tiny_config(precision="bf16"), tiny_dataset(), tmp_path / "bf16", ctx)
    assert trainer.use_bf16
    batches = trainer.stream.batches(0)
    for _ in range(2):
        stats = trainer.train_step(next(batches))
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())  # fp32 master weights
