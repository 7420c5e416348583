"""Training checkpoints: damaged ones are skipped with the reason, `--resume-from`, stale staging, superseded steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddgan.training.run_state import (
    CHECKPOINT_DIR,
    META_FILE,
    SUPERSEDED_DIR,
    TENSORS_FILE,
    RunStateError,
    checkpoint_dirs,
    clean_staging,
    load_newest,
    load_run_state,
    resolve_checkpoint,
    save_run_state,
)


def _state(step: int) -> dict[str, object]:
    return {"weights": torch.full((64,), float(step)), "optim": {"state": {0: {"step": step}}}, "note": f"s{step}"}


def _run_with_steps(run: Path, steps: tuple[int, ...] = (1, 2, 3)) -> Path:
    for step in steps:
        save_run_state(run, step, _state(step), keep=5)
    return run


def _checkpoint(run: Path, step: int) -> Path:
    return run / CHECKPOINT_DIR / f"step_{step:08d}"


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_sound_run_resumes_from_its_newest_step(tmp_path: Path) -> None:
    path, step, state, skipped = load_newest(_run_with_steps(tmp_path)) or pytest.fail("no checkpoint")
    assert (path.name, step, skipped) == ("step_00000003", 3, [])
    assert torch.equal(state["weights"], torch.full((64,), 3.0)) and state["optim"]["state"][0]["step"] == 3


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: _truncate(p, p.stat().st_size - 10), "truncated: its tensors need"),
        (lambda p: _truncate(p, 5), "truncated: 5 bytes, shorter than a safetensors header"),
        (lambda p: p.write_bytes((19).to_bytes(8, "little") + b"garbage, not json!!" * 3), "header is not JSON"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "not a safetensors file"),
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: p.unlink(), "state.safetensors is missing"),
    ],
    ids=["tensors-cut", "header-cut", "garbage-header", "garbage", "empty", "missing"],
)
def test_a_damaged_newest_checkpoint_is_skipped_with_its_reason(tmp_path: Path, damage, reason: str) -> None:
    run = _run_with_steps(tmp_path)
    damage(_checkpoint(run, 3) / TENSORS_FILE)
    path, step, state, skipped = load_newest(run) or pytest.fail("no checkpoint")
    assert (path.name, step, state["note"]) == ("step_00000002", 2, "s2")
    assert [p.name for p, _ in skipped] == ["step_00000003"]
    assert reason in skipped[0][1]


def test_a_truncated_or_empty_description_is_named(tmp_path: Path) -> None:
    run = _run_with_steps(tmp_path)
    _truncate(_checkpoint(run, 3) / META_FILE, 20)
    (_checkpoint(run, 2) / META_FILE).write_bytes(b"")
    _, step, _, skipped = load_newest(run) or pytest.fail("no checkpoint")
    assert step == 1
    assert "not valid JSON, truncated or damaged" in skipped[0][1] and "empty file (0 bytes)" in skipped[1][1]


def test_when_no_checkpoint_loads_the_error_lists_each_reason_in_one_line(tmp_path: Path) -> None:
    run = _run_with_steps(tmp_path, (1, 2))
    for step in (1, 2):
        (_checkpoint(run, step) / TENSORS_FILE).write_bytes(b"")
    with pytest.raises(RunStateError) as info:
        load_newest(run)
    message = str(info.value)
    assert "\n" not in message and "no checkpoint of" in message and "(2 tried)" in message
    assert message.count("empty file (0 bytes)") == 2
    assert load_newest(tmp_path / "new-run") is None  # no checkpoint at all: a new run, not an error


def test_resume_from_a_step_or_a_path(tmp_path: Path) -> None:
    run = _run_with_steps(tmp_path)
    assert resolve_checkpoint(run, "2") == _checkpoint(run, 2)
    assert load_run_state(resolve_checkpoint(run, str(_checkpoint(run, 1))))[0] == 1
    with pytest.raises(RunStateError, match=r"no checkpoint at step 7 \(steps it has: 1, 2, 3\)"):
        resolve_checkpoint(run, "7")
    with pytest.raises(RunStateError, match="neither a step number nor a checkpoint directory"):
        resolve_checkpoint(run, "nowhere/step_9")
    (_checkpoint(run, 1) / TENSORS_FILE).write_bytes(b"PK")
    with pytest.raises(RunStateError, match="truncated: 2 bytes"):
        load_run_state(resolve_checkpoint(run, "1"))  # an explicit choice is never replaced by another


def test_stale_staging_is_cleaned_and_nothing_else(tmp_path: Path) -> None:
    run = _run_with_steps(tmp_path, (1,))
    root = run / CHECKPOINT_DIR
    (root / ".step_00000002.k3j2_x").mkdir()
    (root / ".step_00000002.k3j2_x" / TENSORS_FILE).write_bytes(b"half")
    (root / ".latest.json.ab12.tmp").write_bytes(b"{")
    removed = clean_staging(run)
    assert sorted(p.name for p in removed) == [".latest.json.ab12.tmp", ".step_00000002.k3j2_x"]
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step_00000001"]
    assert clean_staging(tmp_path / "no-run") == []


def test_a_save_below_later_steps_sets_them_aside_and_keeps_the_newest(tmp_path: Path) -> None:
    """After resuming from step 2 (step 3 damaged), later saves are the run's newest; step 3 is kept aside."""
    run = _run_with_steps(tmp_path)
    save_run_state(run, 2, _state(2), keep=2)
    assert [step for step, _ in checkpoint_dirs(run)] == [2, 1]
    assert (run / CHECKPOINT_DIR / SUPERSEDED_DIR / "step_00000003" / TENSORS_FILE).is_file()
    save_run_state(run, 4, _state(4), keep=2)
    assert [step for step, _ in checkpoint_dirs(run)] == [4, 2]  # the oldest pruned, not the newest
