"""`--resume` past a damaged checkpoint, `--resume-from`, stale staging and one-line checkpoint errors, from the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import ddgan.cli
from ddgan.training.run_state import CHECKPOINT_DIR, SUPERSEDED_DIR, TENSORS_FILE, checkpoint_dirs
from tests.training._trainer_setup import (
    one_thread,  # noqa: F401 (the fixture below)
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_ddpm(*argv: str) -> int:
    return ddgan.cli.main(["train-ddpm", *argv])


def _step(out: Path, step: int) -> Path:
    return out / CHECKPOINT_DIR / f"step_{step:08d}"


def _latest_step(out: Path) -> int:
    return int(json.loads((out / CHECKPOINT_DIR / "latest.json").read_text())["step"])


@pytest.mark.slow
def test_resume_skips_a_damaged_checkpoint_and_resume_from_picks_one(tmp_path: Path, caplog) -> None:
    images = np.random.default_rng(1).integers(0, 256, (16, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=images, y_train=np.zeros(16, np.uint8))
    out = tmp_path / "run"
    fast = ["--out", str(out), "--no-progress", "--threads", "1", "--sample-every", "0", "--final-sample-steps", "0",
            "--checkpoint-every", "1", "--keep-checkpoints", "5"]  # fmt: skip
    recipe = ["--image-size", "8", "--block-channels", "8,16", "--batch-size", "4"]
    assert _train_ddpm("--data", str(tmp_path / "d.npz"), *recipe, *fast, "--max-steps", "3") == 0
    newest = _step(out, 3) / TENSORS_FILE
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    staging = out / CHECKPOINT_DIR / ".step_00000004.interrupted"
    staging.mkdir()

    with caplog.at_level(logging.WARNING, logger="ddgan"):
        assert _train_ddpm("--resume", *fast, "--max-steps", "4") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped the checkpoint step_00000003" in w and "truncated" in w for w in warnings), warnings
    assert any(".step_00000004.interrupted" in w and "interrupted checkpoint write" in w for w in warnings)
    assert not staging.exists()
    assert _latest_step(out) == 4 and [s for s, _ in checkpoint_dirs(out)] == [4, 3, 2, 1]  # resumed at 2: a new 3
    assert (out / CHECKPOINT_DIR / SUPERSEDED_DIR / "step_00000003").is_dir()  # the damaged one kept for a look

    assert _train_ddpm("--resume-from", "1", *fast, "--max-steps", "2") == 0  # its history is replayed from 1
    assert _latest_step(out) == 2 and [s for s, _ in checkpoint_dirs(out)] == [2, 1]

    for _, path in checkpoint_dirs(out):
        (path / TENSORS_FILE).write_bytes(b"\x00" * 16)
    with pytest.raises(SystemExit) as info:
        _train_ddpm("--resume", *fast, "--max-steps", "5")
    message = str(info.value.code)
    assert message.startswith("ddgan train-ddpm --resume: no checkpoint of") and "(2 tried)" in message
    assert "\n" not in message and message.count("its header is not JSON") == 2
