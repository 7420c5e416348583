"""`ddgan bench profile`: a per-op table of one chain call (a compiled backend runs the same code, minutes slower)."""

from __future__ import annotations

import ddgan.cli


def _op_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if "aten::" in line or "mkldnn::" in line or "graph_0_" in line]


def test_eager_profile_names_the_backend_and_lists_the_convolutions(capsys) -> None:
    argv = ["bench", "profile", "--preset", "mnist", "--batch", "2", "--dtype", "float32", "--rows", "8"]
    assert ddgan.cli.main([*argv, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "backend torch, batch 2" in out.splitlines()[0]
    assert "## float32: profiled call" in out
    rows = _op_rows(out)
    assert 0 < len(rows) <= 8 and any("convolution" in row for row in rows)
