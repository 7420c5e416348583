"""Server settings refused at startup, before anything listens."""

from __future__ import annotations

import pytest

from ddgan.cli import main


@pytest.mark.parametrize("key", ["", "   ", "\t"])
def test_an_empty_api_key_is_a_startup_error_naming_it(key, registry_path, monkeypatch, capsys):
    monkeypatch.setenv("DDGAN_API_KEY", key)
    assert main(["serve", "--registry", str(registry_path), "--port", "0"]) == 2
    assert "DDGAN_API_KEY" in capsys.readouterr().err


def test_models_selects_registry_entries(registry_path):
    from ddgan.server.registry import RegistryError, load_registry

    registry = load_registry(registry_path)
    assert [m.name for m in registry.only(["mnist"]).models] == ["mnist/ddgan", "mnist/ddpm"]
    assert [m.name for m in registry.only(["mnist/ddpm", "celebahq"]).models] == ["mnist/ddpm", "celebahq/ddgan"]
    with pytest.raises(RegistryError, match="cifar10"):
        registry.only(["cifar10"])


def test_serve_refuses_an_unknown_model_name(registry_path, capsys):
    assert main(["serve", "--registry", str(registry_path), "--models", "mnist,nope", "--port", "0"]) == 2
    assert "nope" in capsys.readouterr().err
