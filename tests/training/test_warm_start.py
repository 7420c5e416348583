"""Warm starts (`init_generator`, `ddgan train --init-generator`) and D-only warm-up steps (`d_warmup_steps`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddgan.cli
from ddgan.model.checkpoint import WEIGHTS_FILE, load_config, save_model, tensors_digest, weights_digest
from ddgan.model.config import ConfigError
from ddgan.model.ncsnpp import NCSNpp
from ddgan.training.trainer import Trainer
from tests.training._trainer_setup import (
    TINY_MODEL,
    one_thread,  # noqa: F401 (the fixture below)
    state_digest,
    tiny_config,
    tiny_dataset,
    write_tiny_npz,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _saved_generator(directory: Path, seed: int = 123) -> tuple[Path, NCSNpp]:
    torch.manual_seed(seed)
    net = NCSNpp(TINY_MODEL.generator)
    save_model(directory, TINY_MODEL, net.state_dict())
    return directory, net


def _warm_config(model_dir: Path, **changes):
    return tiny_config(init_generator=str(model_dir), init_generator_sha256=weights_digest(model_dir), **changes)


def test_a_warm_start_copies_g_into_g_and_ema_and_leaves_d_as_a_cold_start(tmp_path: Path) -> None:
    model_dir, net = _saved_generator(tmp_path / "init")
    warm = Trainer(_warm_config(model_dir), tiny_dataset(), tmp_path / "warm")
    cold = Trainer(tiny_config(), tiny_dataset(), tmp_path / "cold")
    assert state_digest(warm.generator) == state_digest(net) == state_digest(warm.ema)
    assert state_digest(cold.generator) != state_digest(net)
    assert state_digest(warm.discriminator) == state_digest(cold.discriminator)


def test_a_warm_start_refuses_another_architecture_or_changed_weights(tmp_path: Path) -> None:
    model_dir, _ = _saved_generator(tmp_path / "init")
    config = _warm_config(model_dir)
    wider = dataclasses.replace(TINY_MODEL.generator, num_channels_dae=16)
    with pytest.raises(ConfigError, match="another generator"):
        Trainer(config.replace(model=TINY_MODEL.replace(generator=wider)), tiny_dataset(), tmp_path / "a")
    _saved_generator(model_dir, seed=124)  # same architecture, other weights than the run recorded
    with pytest.raises(ConfigError, match="changed since the run recorded them"):
        Trainer(config, tiny_dataset(), tmp_path / "b")
    with pytest.raises(ConfigError, match="go together"):
        tiny_config(init_generator=str(model_dir))


def test_d_warmup_steps_train_only_d_then_both(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(d_warmup_steps=2), tiny_dataset(), tmp_path / "run")
    batches = trainer.stream.batches(0)
    g, ema, d = (state_digest(m) for m in (trainer.generator, trainer.ema, trainer.discriminator))
    for step in (1, 2):
        stats = trainer.train_step(next(batches))
        assert "loss_g" not in stats and trainer.step == step
        assert (state_digest(trainer.generator), state_digest(trainer.ema)) == (g, ema)
        assert state_digest(trainer.discriminator) != d
        d = state_digest(trainer.discriminator)
    stats = trainer.train_step(next(batches))
    assert "loss_g" in stats
    assert state_digest(trainer.generator) != g and state_digest(trainer.ema) != ema
    with pytest.raises(ConfigError, match="d_warmup_steps must be >= 0"):
        tiny_config(d_warmup_steps=-1)


def _tensors(model_dir: Path) -> str:
    return tensors_digest(load_file(model_dir / WEIGHTS_FILE))


def _train(*args: str) -> int:
    return ddgan.cli.main(["train", *args])


def test_init_generator_flag_warm_starts_records_and_resumes_without_the_source(tmp_path: Path, capsys) -> None:
    data = write_tiny_npz(tmp_path / "digits.npz")
    narrow = ("--generator", "num_channels_dae=8", "ch_mult=1,2", "num_res_blocks=1", "nz=4", "z_emb_dim=8")
    loop = ("--no-progress", "--threads", "1", "--sample-count", "4")
    common = (*loop, "--batch-size", "4", *narrow)
    first = tmp_path / "first"
    assert _train("--preset", "mnist", "--data", str(data), "--out", str(first), "--max-steps", "1", *common) == 0
    source = tmp_path / "source"
    shutil.copytree(first / "model", source)

    warm = tmp_path / "warm"
    argv = ("--preset", "mnist", "--data", str(data), "--out", str(warm), "--init-generator", str(source))
    assert _train(*argv, "--d-warmup-steps", "1", "--max-steps", "1", *common) == 0
    recipe = json.loads((warm / "train_config.json").read_text())
    assert recipe["init_generator"] == str(source.resolve()) and recipe["d_warmup_steps"] == 1
    assert recipe["init_generator_sha256"] == weights_digest(source)
    # After one D-only step the exported EMA is still the source generator, byte for byte.
    assert _tensors(warm / "model") == _tensors(source)
    assert "warm-started from source" in load_config(warm / "model").trained_on

    shutil.rmtree(source)  # a resumed run has its own weights and no longer needs the source
    assert _train("--out", str(warm), "--resume", "--max-steps", "2", *loop) == 0
    assert _tensors(warm / "model") != _tensors(first / "model")

    other = ("--preset", "mnist", "--data", str(data), "--out", str(tmp_path / "other"))
    with pytest.raises(SystemExit, match="nowhere is not a model directory"):
        _train(*other, "--init-generator", str(tmp_path / "nowhere"), "--max-steps", "1", *common)
    with pytest.raises(SystemExit, match="another generator"):
        _train(*other, "--init-generator", str(first / "model"), "--max-steps", "1", *loop, "--batch-size", "4")
    assert not (tmp_path / "other").exists()
