"""`ddgan export onnx` on something that is not a DDGAN model directory: one line saying so, nothing written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import ddgan.cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing", "model directory not found: {model}"),
        ("file", "--model must be a model directory, got the file {model}"),
        ("ddpm", "{model} is a DDPM (diffusers) model directory: ONNX export covers the DDGAN chain only"),
    ],
)
def test_export_onnx_refuses_what_is_not_a_ddgan_model_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, model: str, message: str
) -> None:
    paths = {"missing": tmp_path / "nowhere", "file": tmp_path / "a.txt", "ddpm": REPO / "models" / "mnist-ddpm"}
    (tmp_path / "a.txt").write_text("x")
    path, output = paths[model], tmp_path / "out" / "chain.onnx"
    with caplog.at_level(logging.ERROR):
        assert ddgan.cli.main(["export", "onnx", "--model", str(path), "-o", str(output)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(f"export onnx failed: {message.format(model=path)}"), errors
    assert "\n" not in errors[0] and not output.parent.exists()
