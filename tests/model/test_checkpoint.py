"""Our model directories and official netG_*.pth files: round trips, strict key checks, no unpickling."""

from __future__ import annotations

import json
import os
import pickle
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from ddgan.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    convert_official,
    load_config,
    load_model,
    load_official_state_dict,
    save_model,
    weights_digest,
)
from ddgan.model.config import get_preset
from ddgan.model.ddgan_sampler import DDGANSampler
from ddgan.model.diffusion import SamplingChain
from ddgan.model.noise import chain_noise
from ddgan.model.sampler import open_sampler, random_generator

from .conftest import TINY_CONFIG


def _official_file(path: Path, state_dict: dict, prefix: str = "module.") -> Path:
    torch.save({prefix + key: value for key, value in state_dict.items()}, path)
    return path


def test_save_load_round_trip_gives_identical_outputs(tiny_model_dir: Path, tiny_state_dict: dict) -> None:
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config, loaded = load_model(tiny_model_dir)
    assert config == TINY_CONFIG
    original = random_generator(TINY_CONFIG, seed=1)
    assert original.state_dict().keys() == loaded.state_dict().keys()
    noise = chain_noise([3, 4], config.image_shape, config.generator.nz, config.diffusion.num_timesteps)
    with torch.no_grad():
        expected = SamplingChain(original, config.diffusion)(*noise)
        sampler = open_sampler(tiny_model_dir)
        assert isinstance(sampler, DDGANSampler)
        got = sampler.sample_from_noise(noise)
    assert torch.equal(expected, got)
    meta = json.loads((tiny_model_dir / CONFIG_FILE).read_text())
    assert meta["format"] == "ddgan-generator" and meta["preset"] == "tiny"


def test_weights_digest_tracks_the_weights(tmp_path: Path, tiny_model_dir: Path, tiny_state_dict: dict) -> None:
    changed = {k: v.clone() for k, v in tiny_state_dict.items()}
    changed["all_modules.2.bias"] += 1.0
    other = save_model(tmp_path / "other", TINY_CONFIG, changed)
    assert weights_digest(tiny_model_dir) == weights_digest(tiny_model_dir)
    assert weights_digest(tiny_model_dir) != weights_digest(other)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_official_checkpoint_loads_with_or_without_ddp_prefix(
    tmp_path: Path, tiny_state_dict: dict, prefix: str
) -> None:
    source = _official_file(tmp_path / "netG_25.pth", tiny_state_dict, prefix)
    loaded = load_official_state_dict(source, TINY_CONFIG)
    assert loaded.keys() == tiny_state_dict.keys()
    assert all(torch.equal(loaded[k], tiny_state_dict[k]) for k in loaded)
    out = convert_official(source, TINY_CONFIG, tmp_path / "converted")
    assert load_config(out).trained_on == "official checkpoint netG_25.pth"
    _, net = load_model(out)
    assert all(torch.equal(net.state_dict()[k], tiny_state_dict[k]) for k in loaded)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    source = tmp_path / "netG_evil.pth"
    with open(source, "wb") as handle:
        pickle.dump({"all_modules.0.weight": payload}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="refusing"):
        load_official_state_dict(source, TINY_CONFIG)
    assert not marker.exists()
    # The same payload inside a torch zip file.
    zipped = tmp_path / "netG_evil_zip.pth"
    torch.save({"all_modules.0.weight": payload}, zipped)
    with pytest.raises(CheckpointError):
        load_official_state_dict(zipped, TINY_CONFIG)
    assert not marker.exists()


def test_official_content_pth_with_a_namespace_is_refused(tmp_path: Path, tiny_state_dict: dict) -> None:
    content = tmp_path / "content.pth"
    torch.save({"args": Namespace(nz=4), "netG_dict": tiny_state_dict}, content)
    with pytest.raises(CheckpointError, match="netG"):
        load_official_state_dict(content, TINY_CONFIG)


def test_wrong_preset_names_the_preset_and_the_keys(tmp_path: Path, tiny_state_dict: dict) -> None:
    source = _official_file(tmp_path / "netG_25.pth", tiny_state_dict)
    with pytest.raises(CheckpointError) as error:
        load_official_state_dict(source, get_preset("cifar10"))
    message = str(error.value)
    assert "'cifar10'" in message
    assert "missing keys: all_modules." in message
    assert "shape mismatches: all_modules." in message
    assert "checkpoint (16, 16, 3, 3) vs model (256, 256, 3, 3)" in message


def test_extra_and_missing_keys_are_listed(tmp_path: Path, tiny_state_dict: dict) -> None:
    broken = dict(tiny_state_dict)
    del broken["z_transform.1.bias"]
    broken["all_modules.99.weight"] = torch.zeros(1)
    source = _official_file(tmp_path / "netG_1.pth", broken)
    with pytest.raises(CheckpointError, match=r"missing keys: z_transform\.1\.bias; unexpected keys: all_modules\.99"):
        load_official_state_dict(source, TINY_CONFIG)


def test_load_model_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path / "absent")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / CONFIG_FILE).write_text((tiny_model_dir / CONFIG_FILE).read_text())
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_model(tmp_path / "no-weights")
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "bad-json")
    with pytest.raises(CheckpointError, match="not found"):
        load_official_state_dict(tmp_path / "netG_404.pth", TINY_CONFIG)


def test_saved_model_files_follow_the_umask_not_mkstemp(tmp_path: Path, tiny_state_dict: dict) -> None:
    # a server running as another user (the Docker image's non-root user) must be able to read them
    previous = os.umask(0o022)
    try:
        directory = save_model(tmp_path / "model", TINY_CONFIG, tiny_state_dict)
    finally:
        os.umask(previous)
    assert {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()} == {
        CONFIG_FILE: 0o644,
        WEIGHTS_FILE: 0o644,
    }
