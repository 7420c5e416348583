"""`ddgan sample` and `ddgan convert` end to end through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddgan.cli
from ddgan.model.checkpoint import CONFIG_FILE, load_config, load_model
from ddgan.model.config import PRESETS
from ddgan.model.images import make_grid, to_uint8
from ddgan.model.sampler import open_sampler

from .conftest import TINY_CONFIG


def _pngs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.png"))


def _one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_sample_writes_one_png_per_seed_and_a_grid(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    out = tmp_path / "out"
    code = ddgan.cli.main(["sample", "--model", str(tiny_model_dir), "-n", "5", "--seed", "7", "-o", str(out),
                       "--batch-size", "2"])  # fmt: skip
    assert code == 0
    assert _pngs(out) == ["10.png", "11.png", "7.png", "8.png", "9.png", "grid.png"]
    image = np.asarray(Image.open(out / "9.png"))
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # The PNG holds exactly the sampler's image for seed 9 (batches differ only by float rounding).
    expected = to_uint8(open_sampler(tiny_model_dir).sample([9]))[0]
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == make_grid(np.zeros((5, 16, 16, 3), np.uint8)).shape == (2 + 2 * 18, 2 + 3 * 18, 3)
    stdout = capsys.readouterr().out
    assert "wrote 5 images (seeds 7..11)" in stdout and "RANDOM" not in stdout


def test_micro_batch_gives_the_same_png_bytes_for_a_seed(tmp_path: Path, tiny_model_dir: Path) -> None:
    for name, n, seed in (("a", 3, 4), ("b", 1, 5)):
        args = ["sample", "--model", str(tiny_model_dir), "-n", str(n), "--seed", str(seed), "-o", str(tmp_path / name)]
        assert ddgan.cli.main([*args, "--micro-batch", "2", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert (tmp_path / "a" / "5.png").read_bytes() == (tmp_path / "b" / "5.png").read_bytes()


def test_random_weights_say_so_in_output_and_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "random"
    argv = ["sample", "--preset", "mnist", "--random-weights", "-n", "2", "--seed", "0", "-o", str(out)]
    assert ddgan.cli.main(argv) == 0
    assert _pngs(out) == ["random-weights-0.png", "random-weights-1.png", "random-weights-grid.png"]
    assert "RANDOM WEIGHTS" in (out / "README.txt").read_text()
    assert "WARNING: RANDOM WEIGHTS" in capsys.readouterr().out
    assert np.asarray(Image.open(out / "random-weights-0.png")).shape == (32, 32)  # MNIST: one channel


def test_sample_a_ddpm_directory_with_steps(tmp_path: Path, tiny_ddpm_dir: Path, capsys) -> None:
    out = tmp_path / "ddpm"
    argv = ["sample", "--model", str(tiny_ddpm_dir), "-n", "2", "--seed", "3", "--steps", "2", "-o", str(out)]
    assert ddgan.cli.main(argv) == 0
    assert _pngs(out) == ["3.png", "4.png", "grid.png"]
    assert "ddpm, 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--model", "{tmp}/absent"], ["model directory not found"]),
        (["--model", "{tmp}"], ["is not a model directory"]),
        (["--model", "{tiny}", "--steps", "10"], ["--steps: this ddgan model always runs its 4 steps"]),
        (["--model", "{tiny}", "-n", "0"], ["-n must be >= 1"]),
        (["--model", "{tiny}", "--seed", "-3"], ["seed must be in"]),
        (["--preset", "cifar10"], ["needs --random-weights"]),
        (["--model", "{ddpm}", "--steps", "5000"], ["--steps: steps must be in 1..1000"]),
        (["--model", "{tiny}", "--device", "cuda:0"] if not torch.cuda.is_available() else ["--model", "{tmp}"],
         ["CUDA is not available"] if not torch.cuda.is_available() else ["not a model directory"]),
    ],
)  # fmt: skip
def test_sample_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, tiny_model_dir: Path, tiny_ddpm_dir: Path, capsys, extra: list[str], fragments: list[str]
) -> None:
    values = {"tmp": str(tmp_path), "tiny": str(tiny_model_dir), "ddpm": str(tiny_ddpm_dir)}
    argv = ["sample", *(a.format(**values) for a in extra), "-o", str(tmp_path / "out")]
    assert ddgan.cli.main(argv) == 2
    _one_line_error(capsys, "ddgan sample: error:", *fragments)
    assert not (tmp_path / "out").exists()


def test_sample_refuses_a_checkpoint_that_does_not_fit_its_config(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "generator.safetensors").write_bytes((tiny_model_dir / "generator.safetensors").read_bytes())
    config = json.loads((tiny_model_dir / CONFIG_FILE).read_text())
    config["generator"]["num_channels_dae"] = 16
    (wrong / CONFIG_FILE).write_text(json.dumps(config))
    assert ddgan.cli.main(["sample", "--model", str(wrong), "-o", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "does not match preset 'tiny'", "shape mismatches")


def test_unknown_backend_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    argv = ["sample", "--model", str(tiny_model_dir), "--backend", "no-such-backend", "-o", str(tmp_path / "o")]
    assert ddgan.cli.main(argv) == 2
    _one_line_error(capsys, "no-such-backend")


def _official_pth(path: Path, state_dict: dict) -> Path:
    torch.save({"module." + k: v for k, v in state_dict.items()}, path)
    return path


def test_convert_with_official_args(tmp_path: Path, tiny_state_dict: dict, capsys) -> None:
    source = _official_pth(tmp_path / "netG_50.pth", tiny_state_dict)
    out = tmp_path / "converted"
    g = TINY_CONFIG.generator
    argv = ["convert", str(source), "-o", str(out), "--name", "tiny", "--dataset", "tiny-test", "--official-args",
            f"num_channels_dae={g.num_channels_dae}", "ch_mult=1,2", "num_res_blocks=1", "attn_resolutions=[8]",
            "image_size=16", f"nz={g.nz}", f"z_emb_dim={g.z_emb_dim}", "n_mlp=1", "num_timesteps=4"]  # fmt: skip
    assert ddgan.cli.main(argv) == 0
    assert load_config(out) == TINY_CONFIG.replace(trained_on="official checkpoint netG_50.pth")
    _, net = load_model(out)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in tiny_state_dict.items())
    assert f"ddgan sample --model {out}" in capsys.readouterr().out
    # The same architecture from a JSON file of the official options; an existing model needs --force.
    options = tmp_path / "args.json"
    official = {"num_channels_dae": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8]}
    official.update(image_size=16, nz=4, z_emb_dim=8, n_mlp=1)
    options.write_text(json.dumps(official))
    again = ["convert", str(source), "-o", str(out), "--official-args-file", str(options)]
    assert ddgan.cli.main(again) == 2
    _one_line_error(capsys, "--force")
    assert ddgan.cli.main([*again, "--force"]) == 0
    assert load_config(out).generator == TINY_CONFIG.generator


def test_convert_errors(tmp_path: Path, tiny_state_dict: dict, capsys) -> None:
    source = _official_pth(tmp_path / "netG_50.pth", tiny_state_dict)
    assert ddgan.cli.main(["convert", str(source), "--preset", "mnist", "-o", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "does not match preset 'mnist'", "missing keys", "unexpected keys")
    assert not (tmp_path / "m").exists()
    absent = str(tmp_path / "netG_0.pth")
    assert ddgan.cli.main(["convert", absent, "--preset", "mnist", "-o", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "checkpoint not found")
    assert ddgan.cli.main(["convert", str(source), "--official-args", "nz", "-o", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "KEY=VALUE")
    assert ddgan.cli.main(["convert", str(source), "--official-args", "nz=4", "-o", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "ch_mult")


def test_convert_with_a_preset(tmp_path: Path, tiny_state_dict: dict, monkeypatch) -> None:
    """`--preset`: a tiny stand-in preset (full-size ones would need 190 MB of random weights)."""
    monkeypatch.setitem(PRESETS, "tiny", TINY_CONFIG)
    source = _official_pth(tmp_path / "netG_75.pth", tiny_state_dict)
    assert ddgan.cli.main(["convert", str(source), "--preset", "tiny", "-o", str(tmp_path / "p")]) == 0
    assert open_sampler(tmp_path / "p").sample([1]).shape == (1, 3, 16, 16)
