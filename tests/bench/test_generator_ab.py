"""`ddgan bench generator-ab`: the same file as baseline gives the same images; a changed file shows its difference."""

from __future__ import annotations

from pathlib import Path

import pytest

import ddgan.cli

NCSNPP = Path(__file__).resolve().parents[2] / "model" / "ncsnpp.py"
MODEL = Path(__file__).resolve().parents[2] / "models" / "mnist"


def _rows(output: str) -> list[list[str]]:
    return [line.strip("|").split("|") for line in output.splitlines() if line.startswith("| ") and "batch" not in line]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_baseline_equal_to_this_tree_gives_identical_images(dtype: str, capsys) -> None:
    argv = ["bench", "generator-ab", str(NCSNPP), "--model", str(MODEL), "--batch", "1,3", "--rounds", "1"]
    assert ddgan.cli.main([*argv, "--threads", "1", "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    assert f", {dtype};" in out.splitlines()[0]
    rows = _rows(out)
    assert [int(row[0]) for row in rows] == [1, 3]
    assert all(float(row[4]) == 0.0 for row in rows)  # same code, weights and noise: the same bits


def test_a_changed_generator_shows_its_difference(tmp_path: Path, capsys) -> None:
    changed = tmp_path / "ncsnpp_changed.py"  # the output layer's tanh removed: a visible change
    changed.write_text(NCSNPP.read_text().replace("torch.tanh(", "(", 1))
    argv = ["bench", "generator-ab", str(changed), "--model", str(MODEL), "--batch", "2", "--rounds", "1"]
    assert ddgan.cli.main([*argv, "--threads", "1"]) == 0
    assert float(_rows(capsys.readouterr().out)[0][4]) > 0
