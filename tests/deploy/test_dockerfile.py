"""docker/Dockerfile, read as the builder reads it: every path it copies exists, the image runs what it should."""

from __future__ import annotations

import fnmatch
import tomllib

from tests.deploy import dockerfile
from tests.deploy.dockerfile import instructions
from tests.deploy.promql import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _copies() -> list[tuple[list[str], str, list[str]]]:
    """(sources, destination, flags) of every COPY/ADD."""
    result = []
    for instruction in instructions():
        if instruction.keyword in ("COPY", "ADD"):
            words = instruction.words()
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            result.append((paths[:-1], paths[-1], flags))
    return result


def test_every_copied_path_exists_in_the_build_context() -> None:
    # Compose builds with context "." (the repository root), as the Dockerfile's header says.
    copied_from_context = [(s, f) for sources, _, flags in _copies() for s in sources for f in [flags]]
    assert copied_from_context
    for source, flags in copied_from_context:
        if any(flag.startswith("--from=") for flag in flags):
            continue
        assert (REPO / source).exists(), f"COPY source {source} is missing from the repository"


def test_every_python_package_and_the_bundled_models_are_copied() -> None:
    sources = {s for sources, _, flags in _copies() if not any(f.startswith("--from") for f in flags) for s in sources}
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    wanted = {p for p in packages if any(fnmatch.fnmatch(p, pattern) for pattern in patterns)}
    assert wanted <= sources, f"packages missing from the image: {wanted - sources}"
    # ddgan/ links to the top-level folders it installs: each link's target must be in the image as well.
    linked = {link.resolve().name for link in (REPO / "ddgan").iterdir() if link.is_symlink()}
    assert linked == {"model", "server", "export", "training", "bench", "client"}
    assert linked <= sources, f"folders ddgan/ links to but the image lacks: {linked - sources}"
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], "ddgan", "models"} <= sources
    assert ("models", "/models") in {(s, d) for sources, d, _ in _copies() for s in sources}


def test_gpu_base_and_extras() -> None:
    defaults = dockerfile.arg_defaults()
    assert defaults["BASE_IMAGE"].startswith("nvidia/cuda:13.")
    assert defaults["TORCH_INDEX_URL"].endswith("/cu130")  # CUDA 13, like tensorrt-cu13 and onnxruntime-gpu>=1.27
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(defaults["EXTRAS"].split(",")) <= set(extras)
    assert "tensorrt-cu13==10.16.1.11" in extras["gpu"]
    froms = [i.words() for i in instructions() if i.keyword == "FROM"]
    assert froms == [["${BASE_IMAGE}", "AS", "builder"], ["${BASE_IMAGE}", "AS", "runtime"]]
    runs = " ".join(i.arguments for i in instructions() if i.keyword == "RUN")
    assert "--extra-index-url https://pypi.nvidia.com" in runs  # the real TensorRT library wheels
    assert '--index-url "${TORCH_INDEX_URL}"' in runs and "-c /opt/torch-constraint.txt" in runs


def test_runtime_runs_ddgan_serve_as_a_non_root_user_with_a_readiness_healthcheck() -> None:
    runtime = [i for i in instructions() if i.stage == 1]
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users == ["ddgan"]
    assert any("useradd --system --uid 10001" in i.arguments for i in runtime if i.keyword == "RUN")
    (cmd,) = [i.words() for i in runtime if i.keyword == "CMD"]
    assert cmd == ["ddgan", "serve"]
    assert PYPROJECT["project"]["scripts"]["ddgan"] == "ddgan.cli:main"
    (healthcheck,) = [i.arguments for i in runtime if i.keyword == "HEALTHCHECK"]
    assert healthcheck.split("CMD", 1)[1].strip() == '["python3", "/opt/ddgan/healthcheck.py"]'
    assert (["docker/healthcheck.py", "docker/loadgen.py"], "/opt/ddgan/") in [(s, d) for s, d, _ in _copies()]


def test_runtime_environment_is_server_settings() -> None:
    from ddgan.server.settings import ServerSettings

    environment = dockerfile.env(stage=1)
    server_settings = {k: v for k, v in environment.items() if k.startswith("DDGAN_")}
    assert set(server_settings) == {"DDGAN_REGISTRY", "DDGAN_HOST", "DDGAN_PORT"}
    assert all(k.removeprefix("DDGAN_").lower() in ServerSettings.model_fields for k in server_settings)
    # The registry lives in the copied models directory, the server binds outside the container's loopback.
    assert server_settings["DDGAN_REGISTRY"] == "/models/registry.toml"
    registry = tomllib.loads((REPO / "models" / "registry.toml").read_text())
    for entry in registry["models"]:  # relative paths stay inside the copied (and volume-mounted) directory
        path = entry["path"]
        assert not path.startswith("/") and (REPO / "models" / path).resolve().is_relative_to(REPO / "models"), path
    assert server_settings["DDGAN_HOST"] == "0.0.0.0"
    exposed = [i.arguments for i in instructions() if i.keyword == "EXPOSE"]
    assert exposed == [server_settings["DDGAN_PORT"]]
    assert environment["PATH"].startswith("/opt/venv/bin:")


def test_instruction_reader_joins_continuations() -> None:
    parsed = dockerfile.instructions('FROM a AS b\n# note\nRUN one \\\n    # inner\n    two\nCMD ["x", "y"]\n')
    assert [(i.keyword, i.arguments, i.stage) for i in parsed] == [
        ("FROM", "a AS b", 0),
        ("RUN", "one  two", 0),
        ("CMD", '["x", "y"]', 0),
    ]
    assert parsed[2].words() == ["x", "y"]


def test_ignore_file_sends_exactly_what_the_dockerfile_copies() -> None:
    rules = dockerfile.ignore_rules()
    for sources, _, flags in _copies():
        if any(flag.startswith("--from=") for flag in flags):
            continue
        for source in sources:
            assert dockerfile.sent_to_builder(source, rules), source
            for path in list((REPO / source).rglob("*.py"))[:20] if (REPO / source).is_dir() else []:
                assert dockerfile.sent_to_builder(str(path.relative_to(REPO)), rules), path
    for kept_out in (".venv/lib/python3.11/site-packages/torch/__init__.py", "runs/mnist/ckpt.pt", ".git/HEAD"):
        assert not dockerfile.sent_to_builder(kept_out, rules), kept_out
    for kept_out in ("server/__pycache__/app.cpython-312.pyc", "models/mnist/chain.plan", "models/x/trt-timing.cache"):
        assert not dockerfile.sent_to_builder(kept_out, rules), kept_out
    assert dockerfile.sent_to_builder("models/mnist/chain.onnx", rules)  # portable: the onnxruntime backend uses it
