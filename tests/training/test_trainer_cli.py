"""`ddgan train`: input checks before any work, the resolved recipe in the run, resume rules, export-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ddgan.cli
from ddgan.model.checkpoint import load_config
from ddgan.model.config import ConfigError
from ddgan.training.train_config import TrainConfig, recipe_for
from tests.training._trainer_setup import (
    one_thread,  # noqa: F401 (the fixture below)
    write_tiny_npz,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(*args: str) -> int:
    return ddgan.cli.main(["train", *args])


def test_a_missing_data_path_fails_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="does-not-exist.npz does not exist"):
        _train("--preset", "mnist", "--data", str(tmp_path / "does-not-exist.npz"), "--out", str(out))
    assert not out.exists()


def test_a_new_run_needs_a_preset_and_data(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="needs --preset and --data"):
        _train("--out", str(tmp_path / "run"))
    with pytest.raises(SystemExit, match="holds no run to resume; a new run needs --preset and --data"):
        _train("--out", str(tmp_path / "run"), "--resume")


def test_official_recipes_per_preset() -> None:
    cifar = recipe_for("cifar10")
    assert (cifar.lr_d, cifar.lr_g, cifar.r1_gamma, cifar.lazy_reg, cifar.ema_decay) == (
        1.25e-4,
        1.6e-4,
        0.02,
        15,
        0.9999,
    )
    assert (cifar.beta1, cifar.beta2, cifar.lr_min, cifar.discriminator.kind, cifar.discriminator.ngf) == (
        0.5, 0.9, 1e-5, "small", 64,
    )  # fmt: skip
    celeba = recipe_for("celebahq")
    assert (celeba.lr_d, celeba.lr_g, celeba.r1_gamma, celeba.lazy_reg, celeba.discriminator.kind) == (
        1e-4, 2e-4, 2.0, 10, "large",
    )  # fmt: skip
    siddm = recipe_for("cifar10", "siddm")
    assert not siddm.discriminator.conditional and siddm.discriminator.dense_heads and siddm.lambda_afd == 1.0


def test_max_steps_zero_is_refused_not_read_as_no_limit(tmp_path: Path, capsys) -> None:
    for command in ("train", "train-ddpm"):
        with pytest.raises(SystemExit) as exit_info:
            ddgan.cli.main([command, "--data", "d.npz", "--out", str(tmp_path / "run"), "--max-steps", "0"])
        assert exit_info.value.code == 2
        assert "argument --max-steps: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        recipe_for("mnist").replace(max_steps=0)
    assert recipe_for("mnist").max_steps is None  # no limit: all epochs


def test_train_writes_the_resolved_recipe_resumes_and_exports(tmp_path: Path, capsys) -> None:
    data, out = write_tiny_npz(tmp_path / "digits.npz"), tmp_path / "run"
    common = ("--out", str(out), "--no-progress", "--threads", "1", "--sample-count", "4")
    assert _train("--preset", "mnist", "--data", str(data), "--batch-size", "4", "--max-steps", "1", *common) == 0
    saved = TrainConfig.from_json((out / "train_config.json").read_text())
    assert saved.batch_size == 4 and saved.max_steps == 1 and saved.lr_g == recipe_for("mnist").lr_g
    assert json.loads((out / "run.json").read_text())["data"] == str(data.resolve())
    assert load_config(out / "model").generator == saved.model.generator
    assert any((out / "tensorboard").iterdir())

    with pytest.raises(SystemExit, match="already holds a run"):
        _train("--preset", "mnist", "--data", str(data), *common)
    with pytest.raises(SystemExit, match="recipe is fixed.*got lr_g"):
        _train("--resume", "--lr-g", "1", *common)
    capsys.readouterr()
    assert _train("--resume", *common) == 0  # at its --max-steps: says so and how to extend it
    assert "is finished (step 1 of 1); to train longer, resume with a larger --max-steps (now 1)" in (
        capsys.readouterr().err
    )
    assert "resumed" not in json.loads((out / "run.json").read_text())  # nothing touched
    assert _train("--resume", "--max-steps", "2", *common) == 0  # no --data: run.json has it
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1

    exported = tmp_path / "exported"
    assert _train("--out", str(out), "--export-only", str(exported)) == 0
    config = load_config(exported)
    assert "2 steps" in config.trained_on and "digits.npz" in config.trained_on
    assert "step 2" in capsys.readouterr().out


def test_generator_flag_sets_the_architecture_by_official_names(tmp_path: Path, capsys) -> None:
    data, out = write_tiny_npz(tmp_path / "digits.npz"), tmp_path / "run"
    common = ("--out", str(out), "--no-progress", "--threads", "1", "--sample-count", "4")
    narrow = ("--generator", "num_channels_dae=8", "ch_mult=1", "2", "attn_resolutions=", "nz=16", "z_emb_dim=32")
    argv = ("--preset", "stacked_mnist", "--data", str(data), "--batch-size", "4", "--max-steps", "1", *narrow)
    assert _train(*argv, *common) == 0
    g = load_config(out / "model").generator
    assert (g.num_channels, g.num_channels_dae, g.ch_mult, g.attn_resolutions, g.nz, g.z_emb_dim) == (
        3, 8, (1, 2), (), 16, 32,
    )  # fmt: skip
    assert g.num_res_blocks == 2  # what --generator does not name stays the preset's
    assert _train("--resume", "--max-steps", "2", *narrow, *common) == 0  # the same architecture may be repeated
    with pytest.raises(SystemExit, match="recipe is fixed.*got model"):
        _train("--resume", "--max-steps", "3", "--generator", "num_channels_dae=16", *common)

    def new_run(name: str, *generator: str) -> int:
        out = str(tmp_path / name)
        return _train("--preset", "mnist", "--data", str(data), "--out", out, "--generator", *generator)

    with pytest.raises(SystemExit, match="num_channel_dae.*did you mean .num_channels_dae"):
        new_run("b", "num_channel_dae=8")
    with pytest.raises(SystemExit, match="--generator: ngf is not a generator option"):
        new_run("c", "ngf=8")
    with pytest.raises(SystemExit, match="not divisible"):
        new_run("d", "ch_mult=1,1,1,1,1,1,1")
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_run_written_by_ddgan_serve_0_2_resumes_to_its_last_epoch(tmp_path: Path, capsys) -> None:
    """0.2 wrote max_steps 0 for "no limit" and had no checkpoint_minutes; such a run still resumes."""
    data, out = write_tiny_npz(tmp_path / "digits.npz", count=8), tmp_path / "run"
    common = ("--out", str(out), "--no-progress", "--threads", "1", "--sample-count", "4")
    new_run = ("--preset", "mnist", "--data", str(data), "--batch-size", "4", "--epochs", "2", "--max-steps", "1")
    assert _train(*new_run, *common) == 0
    legacy = json.loads((out / "train_config.json").read_text())
    del legacy["checkpoint_minutes"]
    legacy["max_steps"] = 0
    (out / "train_config.json").write_text(json.dumps(legacy))
    assert _train("--resume", *common) == 0  # 2 epochs of 2 steps
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert TrainConfig.from_json((out / "train_config.json").read_text()).max_steps is None
    capsys.readouterr()
    assert _train("--resume", *common) == 0
    assert "finished (step 4 of 4); to train longer, resume with a larger --epochs (now 2)" in capsys.readouterr().err


def test_one_vocabulary_across_the_training_commands() -> None:
    import argparse

    from ddgan.training import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    common = ["--threads", "2", "--no-progress"]
    commands = {
        "train": ["--out", "r", "--resume", "--max-steps", "5", "--time-limit", "1", "--checkpoint-minutes", "2"],
        "train-ddpm": ["--out", "r", "--resume", "--max-steps", "5", "--time-limit", "1", "--checkpoint-minutes", "2"],
        "train-classifier": ["--data", "m.npz", "--out", "c"],
        "eval": ["--model", "m", "--classifier", "c"],
        "toy": ["--max-steps", "5", "--num-timesteps", "2"],
    }
    for command, argv in commands.items():
        args = parser.parse_args([command, *argv, *common])
        assert args.threads == 2 and args.no_progress, command
        if "--max-steps" in argv:
            assert 5 in (getattr(args, "max_steps", None), getattr(args, "iterations", None)), command
    # the names of ddgan-serve 0.2 still work where they differed
    toy = parser.parse_args(["toy", "--iterations", "7", "--steps", "8"])
    assert (toy.iterations, toy.num_timesteps, toy.threads) == (7, 8, 1)
    assert parser.parse_args(["train-ddpm", "--out", "r", "--steps", "9"]).max_steps == 9
