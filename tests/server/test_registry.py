"""Registry files: validation errors name the field; paths resolve against the file; the default registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddgan.server.encoding import negotiate
from ddgan.server.errors import APIError
from ddgan.server.registry import RegistryError, load_registry

MINIMAL = '[[models]]\ndataset = "mnist"\npath = "mnist"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path):
    registry = load_registry(write(tmp_path, MINIMAL))
    (entry,) = registry.models
    assert entry.path == (tmp_path / "mnist").resolve()
    assert (entry.sampler, entry.backend, entry.device, entry.dtype) == ("ddgan", "torch", "auto", "float32")
    # Batch-invariant without a micro_batch: warm-up measures the candidate forward sizes and picks one.
    assert entry.batch_invariant and entry.micro_batch is None and entry.measures_micro_batch
    assert entry.batch_sizes == (1, 2, 4, 8, 16)
    assert entry.model_copy(update={"max_batch_images": 24}).batch_sizes == (1, 2, 4, 8, 16, 24)
    # a pinned forward size, and the smaller sizes warm-up checks as remainder passes
    assert entry.model_copy(update={"micro_batch": 4}).batch_sizes == (1, 2, 4)
    assert entry.model_copy(update={"batch_invariant": False}).batch_sizes == (1, 16)
    assert registry.get("mnist", "ddgan") is entry and registry.get("mnist", "ddpm") is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("max_batch_images = 0", "models.0.max_batch_images"),
        ('max_batch_images = "many"', "models.0.max_batch_images"),
        ('dtype = "float64"', "models.0.dtype"),
        ("micro_batch = 17", "micro_batch (17) exceeds max_batch_images (16)"),
        ("micro_batch = 4\nbatch_invariant = false", "micro_batch applies to batch_invariant = true only"),
        ('device = "gpu"', "models.0.device"),
        ('sampler = "gan"', "models.0.sampler"),
        ("colour = 1", "models.0.colour"),
        ("default_steps = 10", "default_steps applies to sampler 'ddpm' only"),
        ("max_queue_images = 2", "max_queue_images must be >= max_batch_images"),
        ("warmup_batch_sizes = [0]", "warmup_batch_sizes"),
    ],
)
def test_invalid_fields_are_named(tmp_path, extra, field):
    with pytest.raises(RegistryError, match="invalid registry") as raised:
        load_registry(write(tmp_path, MINIMAL + extra + "\n"))
    assert field in str(raised.value) and str(tmp_path) in str(raised.value)


def test_dataset_names_must_not_be_paths(tmp_path):
    with pytest.raises(RegistryError, match="models.0.dataset"):
        load_registry(write(tmp_path, '[[models]]\ndataset = "../etc"\npath = "x"\n'))


def test_duplicates_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(RegistryError, match="mnist/ddgan is listed twice"):
        load_registry(write(tmp_path, MINIMAL + MINIMAL))
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "absent.toml")
    with pytest.raises(RegistryError, match="not valid TOML"):
        load_registry(write(tmp_path, "[[models]\n"))
    with pytest.raises(RegistryError, match="models"):
        load_registry(write(tmp_path, "title = 'no models'\n"))


def test_ddpm_runs_on_torch_only(tmp_path):
    with pytest.raises(RegistryError, match="ddpm baseline runs on plain 'torch' only"):
        load_registry(write(tmp_path, MINIMAL + 'sampler = "ddpm"\nbackend = "onnxruntime"\n'))


def test_the_default_registry():
    registry = load_registry(Path(__file__).resolve().parents[2] / "models" / "registry.toml")
    keys = {(m.dataset, m.sampler) for m in registry.models}
    assert keys == {("mnist", "ddgan"), ("mnist", "ddpm"), ("celebahq", "ddgan"), ("cifar10", "ddgan"),
                    ("lsun_church", "ddgan")}  # fmt: skip
    celebahq = registry.get("celebahq", "ddgan")
    assert celebahq is not None
    assert celebahq.install_hint() == "ddgan convert netG_550.pth --preset celebahq -o models/celebahq"
    assert registry.get("mnist", "ddgan").path.name == "mnist"  # type: ignore[union-attr]
    assert registry.get("mnist", "ddpm").path.name == "mnist-ddpm"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("image/*", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("application/zip;q=0.4, image/png;q=0.8", "image/png"),
        ("text/plain, application/zip", "application/zip"),
        ("image/png;q=bogus, application/json;q=0.1", "application/json"),
    ],
)
def test_negotiation(accept, media):
    assert negotiate(accept) == media


@pytest.mark.parametrize("accept", ["text/html", "image/jpeg", "application/json;q=0"])
def test_negotiation_refuses(accept):
    with pytest.raises(APIError) as raised:
        negotiate(accept)
    assert raised.value.status == 406


def test_serve_cli_rejects_a_bad_registry_naming_the_field(tmp_path, capsys):
    import ddgan.cli

    bad = write(tmp_path, MINIMAL + "max_wait_ms = -1\n")
    assert ddgan.cli.main(["serve", "--registry", str(bad)]) == 2
    assert "models.0.max_wait_ms" in capsys.readouterr().err
    assert ddgan.cli.main(["serve", "--registry", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert ddgan.cli.main(["serve", "--registry", str(bad), "--png-workers", "0"]) == 2
    assert "png_workers" in capsys.readouterr().err
