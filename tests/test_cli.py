"""The `ddgan` package and command: one import package, a light overview, clear errors for missing extras."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import ddgan.cli

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_folders_install_under_one_package_only(tmp_path: Path) -> None:
    """Outside the repository `import ddgan.model` works and the generic top-level names do not exist."""
    found = _python("import ddgan.model.sampler, ddgan.server.app; print(ddgan.model.__name__)", tmp_path)
    assert found.returncode == 0, found.stderr
    for generic in ("model", "server", "export", "training", "bench", "client"):
        missing = _python(f"import {generic}", tmp_path)
        assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr, generic


def test_help_answers_without_importing_torch(tmp_path: Path) -> None:
    code = "import sys, ddgan.cli\ntry:\n    ddgan.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "assert 'torch' not in sys.modules, 'torch was imported'\n"
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ddgan.cli.COMMANDS:
        assert command in result.stdout


def test_python_dash_m_ddgan_is_the_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddgan", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "usage: ddgan" in result.stdout


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def needs_onnx(args: object) -> int:
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")

    def register(subparsers) -> None:
        subparsers.add_parser("export").set_defaults(handler=needs_onnx)

    module = types.ModuleType("fake_export_cli")
    module.register = register  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_export_cli", module)
    monkeypatch.setitem(ddgan.cli.COMMANDS, "export", ("fake_export_cli", "export"))
    assert ddgan.cli.main(["export"]) == 2
    err = capsys.readouterr().err
    assert err == "ddgan export: needs the 'export' extra (missing module onnx): pip install -e '.[export]'\n"


def test_every_extra_named_in_messages_exists() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(ddgan.cli.EXTRAS.values()) <= set(extras)


def test_a_missing_bench_module_is_an_error_not_a_silently_absent_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from ddgan.bench import cli as bench_cli

    monkeypatch.setitem(bench_cli.BENCHMARKS, "nope", "ddgan.bench.no_such_benchmark")
    with pytest.raises(ModuleNotFoundError):
        ddgan.cli.build_parser("bench")
