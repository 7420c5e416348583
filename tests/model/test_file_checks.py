"""Unreadable weights files are named by what is wrong with them, for official .pth files and model directories."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ddgan.cli
from ddgan.model.checkpoint import WEIGHTS_FILE, CheckpointError, load_model, load_official_state_dict
from ddgan.model.file_checks import safetensors_problem, torch_file_problem
from tests.model.conftest import TINY_CONFIG


def _zip_pth(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _legacy_pth(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


STATE = {"module.all_modules.0.weight": torch.arange(4000, dtype=torch.float32)}
OFFICIAL_CASES = {
    # name: (file bytes, what the error must say); before: an empty reason, "[Errno 22] Invalid argument",
    # a KeyError traceback or "not a plain tensor state_dict" for a file that is merely damaged.
    "empty": (b"", "empty file (0 bytes)"),
    "zip-cut-in-half": (_zip_pth(STATE)[:8000], "truncated: a zip archive (8000 bytes) without its central directory"),
    "zip-tail-cut": (_zip_pth(STATE)[:-30], "truncated: a zip archive"),
    "legacy-cut": (_legacy_pth(STATE)[:9000], "truncated (unexpected EOF"),
    "garbage": (bytes(range(256)) * 8, "not a zip/pickle file (first bytes 00 01 02 03): not written by torch.save"),
    "text": (b"hello world\n", "not a zip/pickle file (first bytes 68 65 6c 6c)"),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_an_unreadable_official_checkpoint_says_what_is_wrong(tmp_path: Path, case: str) -> None:
    data, reason = OFFICIAL_CASES[case]
    path = tmp_path / "netG_1200.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(path, TINY_CONFIG)
    message = str(info.value)
    assert message.startswith(f"cannot read {path} as a PyTorch checkpoint: ") and reason in message, message
    assert "\n" not in message


def test_sound_files_have_no_problem(tmp_path: Path) -> None:
    (tmp_path / "a.pth").write_bytes(_zip_pth(STATE))
    (tmp_path / "b.pth").write_bytes(_legacy_pth(STATE))
    save_file({"w": torch.ones(3)}, tmp_path / "c.safetensors")
    assert torch_file_problem(tmp_path / "a.pth") is None and torch_file_problem(tmp_path / "b.pth") is None
    assert safetensors_problem(tmp_path / "c.safetensors") is None
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    assert torch_file_problem(tmp_path / "plain.pkl") is None  # a pickle stream: torch.load's safe loader decides


def test_a_damaged_model_directory_says_what_is_wrong(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    weights = (tiny_model_dir / WEIGHTS_FILE).read_bytes()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    for data, reason in [
        (weights[: len(weights) - 100], "truncated: its tensors need"),
        (b"", "empty file (0 bytes)"),
        (_zip_pth(STATE), "not a safetensors file"),
    ]:
        (model / WEIGHTS_FILE).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_model(model)
        assert f"cannot read {model / WEIGHTS_FILE}: {reason}" in str(info.value)
    assert ddgan.cli.main(["sample", "--model", str(model), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a safetensors file" in err and "Traceback" not in err
