"""Server settings refused at startup, before anything listens."""

from __future__ import annotations

import pytest

from ddgan.cli import main


@pytest.mark.parametrize("key", ["", "   ", "\t"])
def test_an_empty_api_key_is_a_startup_error_naming_it(key, registry_path, monkeypatch, capsys):
    monkeypatch.setenv("DDGAN_API_KEY", key)
    assert main(["serve", "--registry", str(registry_path), "--port", "0"]) == 2
    assert "DDGAN_API_KEY" in capsys.readouterr().err
