"""Parity with the official DDGAN generator and sampler (fixture made with the official code)."""

from __future__ import annotations

import torch

from ddgan.model.checkpoint import check_state_dict
from ddgan.model.config import from_official_args
from ddgan.model.diffusion import DiffusionSchedule, SamplingChain
from ddgan.model.ncsnpp import NCSNpp

TOLERANCE = 1e-5


def _generator(case: dict) -> tuple[NCSNpp, object]:
    config = from_official_args(case["args"], preset="parity")
    state_dict = {k.removeprefix("module."): v for k, v in case["state_dict"].items()}
    check_state_dict(state_dict, config)
    net = NCSNpp(config.generator)
    net.load_state_dict(state_dict, strict=True)
    return net.eval(), config


def test_official_keys_all_carry_the_ddp_prefix(parity_case: dict) -> None:
    assert len(parity_case["state_dict"]) == 384
    assert all(key.startswith("module.") for key in parity_case["state_dict"])


def test_one_forward_pass_matches_official(parity_case: dict) -> None:
    net, _ = _generator(parity_case)
    with torch.no_grad():
        y = net(parity_case["x"], parity_case["t"], parity_case["z"])
    assert y.shape == parity_case["y"].shape
    assert (y - parity_case["y"]).abs().max().item() <= TOLERANCE


def test_full_sampling_chain_matches_official(parity_case: dict) -> None:
    net, config = _generator(parity_case)
    chain = SamplingChain(net, config.diffusion).eval()
    with torch.no_grad():
        x_0 = chain(parity_case["x_T"], parity_case["zs"], parity_case["xis"])
    assert (x_0 - parity_case["x_0"]).abs().max().item() <= TOLERANCE


def test_posterior_coefficients_match_official(parity_case: dict) -> None:
    _, config = _generator(parity_case)
    schedule = DiffusionSchedule(config.diffusion)
    official = parity_case["posterior"]
    torch.testing.assert_close(schedule.posterior_mean_coef1, official["coef1"], rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.posterior_mean_coef2, official["coef2"], rtol=0, atol=1e-7)
    torch.testing.assert_close(schedule.posterior_log_variance_clipped, official["log_var"], rtol=1e-6, atol=1e-5)
    # The official `betas` are the T transition betas β_1..β_T (our buffer also holds the β_0 placeholder).
    torch.testing.assert_close(schedule.betas[1:], official["betas"], rtol=0, atol=1e-7)
