"""docker-compose.yml and docker-compose.cpu.yml, read as Compose reads them (no docker engine here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import dockerfile, live
from tests.deploy.promql import DASHBOARD, DATASOURCES, PROMETHEUS_CONFIG, REPO

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"


@dataclass(frozen=True)
class Reset:
    """Compose's `!reset` tag: the override removes the value instead of merging into it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node))
    return Reset(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge key by key, `!reset` removes, other values replace."""
    if isinstance(override, Reset):
        return None
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value)
        return {k: v for k, v in merged.items() if v is not None}
    return override


_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def with_defaults(value: Any) -> Any:
    """Interpolate `${VAR:-default}` as Compose does with VAR unset."""
    if isinstance(value, str):
        return _DEFAULT.sub(lambda m: m.group(2) or "", value)
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_services_and_profiles(services: dict) -> None:
    assert set(services) == {"server", "prometheus", "grafana", "loadgen"}
    # The load generator is opt-in; everything else starts with a plain `docker compose up`.
    assert services["loadgen"]["profiles"] == ["loadgen"]
    assert all("profiles" not in services[name] for name in ("server", "prometheus", "grafana"))


def test_server_reserves_an_nvidia_gpu(services: dict) -> None:
    devices = services["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    (device,) = devices
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert ("count" in device) != ("device_ids" in device)  # Compose rejects both together
    assert [with_defaults(d) for d in device.get("device_ids", [])] == ["0"] or device.get("count") in (1, "all")


def test_healthchecks(services: dict) -> None:
    server = services["server"]["healthcheck"]
    assert server["test"] == ["CMD", "python3", "/opt/ddgan/healthcheck.py"]
    assert (REPO / "docker" / "healthcheck.py").is_file()
    assert "/readyz" in (REPO / "docker" / "healthcheck.py").read_text()
    for name in ("prometheus", "grafana"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and any(part.startswith("http://localhost:") for part in test), test
    assert "localhost:9090/-/ready" in " ".join(services["prometheus"]["healthcheck"]["test"])
    assert "localhost:3000/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])
    # Grafana waits for a healthy Prometheus, the load generator for a ready server.
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["loadgen"]["depends_on"]["server"]["condition"] == "service_healthy"


def test_server_environment_is_valid_server_settings(services: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from ddgan.server.settings import ServerSettings

    environment = services["server"]["environment"]
    fields = set(ServerSettings.model_fields)
    unknown = [name for name in environment if name.removeprefix("DDGAN_").lower() not in fields]
    assert not unknown, f"not server settings: {unknown}"
    for name in list(environment):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        if value is not None:  # no value: passed through from the host only when set there (DDGAN_API_KEY)
            monkeypatch.setenv(name, str(with_defaults(value)))
    settings = ServerSettings()
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert settings.device == "cuda" and settings.backend is None and settings.random_weights is False
    assert settings.api_key is None
    assert str(settings.registry) == "/models/registry.toml"


def test_models_volume_holds_the_registry(compose: dict, services: dict) -> None:
    assert [with_defaults(v) for v in services["server"]["volumes"]] == ["models:/models"]
    assert {"models", "prometheus-data", "grafana-data"} <= set(compose["volumes"])
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY --chown=ddgan:ddgan models /models" in dockerfile  # seeds the named volume on first start
    assert (REPO / "models").is_dir()


def test_bind_mounts_exist_in_the_repository(services: dict) -> None:
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), volume


def test_prometheus_scrapes_the_server_service(services: dict) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "ddgan"]
    targets = [target for static in job["static_configs"] for target in static["targets"]]
    assert targets == [f"server:{services['server']['environment']['DDGAN_PORT']}"]
    assert "./docker/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_provisioning_matches_the_stack(services: dict) -> None:
    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    provider = yaml.safe_load((DATASOURCES.parent.parent / "dashboards" / "ddgan.yml").read_text())["providers"][0]
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}" and DASHBOARD.is_file()
    assert with_defaults(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]) == "admin"


def test_loadgen_environment_drives_the_load_generator(services: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    loadgen_service = services["loadgen"]
    assert loadgen_service["command"] == ["python3", "/opt/ddgan/loadgen.py"]
    assert loadgen_service["image"] == services["server"]["image"]
    for name, value in loadgen_service["environment"].items():
        if value is not None:
            monkeypatch.setenv(name, str(with_defaults(value)))
    args = live.load_loadgen().parse_args([])
    assert (args.url, args.dataset, args.ddgan_rps, args.ddpm_rps, args.n) == ("http://server:8000", "mnist", 4, 0.5, 4)
    assert args.duration == 0  # runs until the stack stops


def test_cpu_override_drops_the_gpu(services: dict, compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    override = load(COMPOSE_CPU)
    assert isinstance(override["services"]["server"]["deploy"]["resources"]["reservations"]["devices"], Reset)
    merged = merge(compose, override)["services"]
    server = merged["server"]
    assert "devices" not in server["deploy"]["resources"]["reservations"]
    assert with_defaults(server["environment"]["DDGAN_DEVICE"]) == "cpu"
    for name in ("server", "loadgen"):
        args = merged[name]["build"]["args"]
        assert "nvidia" not in args["BASE_IMAGE"] and args["TORCH_INDEX_URL"].endswith("/cpu")
        assert "gpu" not in args["EXTRAS"].split(",")
        assert merged[name]["build"]["dockerfile"] == "docker/Dockerfile"  # merged, not replaced
        assert with_defaults(merged[name]["image"]) == "ddgan-serve:cpu"
    assert merged["loadgen"]["profiles"] == ["loadgen"]


def test_gpu_build_args_match_the_dockerfile_defaults(services: dict) -> None:
    defaults = dockerfile.arg_defaults()
    for name, value in services["server"]["build"]["args"].items():
        assert defaults[name] == value, name


def _seconds(duration: str) -> float:
    """A Compose duration such as `45s`, `1m30s`."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, duration
    return int(parts.group(1) or 0) * 60 + float(parts.group(2) or 0)


def test_stop_grace_period_exceeds_the_server_shutdown_limit(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker kills the container at `stop_grace_period`: the server must have exited by then."""
    from ddgan.server.http_server import ANSWER_GRACE_S
    from ddgan.server.settings import ServerSettings

    for services in (compose["services"], merge(compose, load(COMPOSE_CPU))["services"]):
        server = services["server"]
        monkeypatch.setenv(
            "DDGAN_SHUTDOWN_TIMEOUT_S", str(with_defaults(server["environment"]["DDGAN_SHUTDOWN_TIMEOUT_S"]))
        )
        limit = ServerSettings().shutdown_timeout_s
        # The deadline, the time to write the 503 answers, and a few seconds for the process to exit.
        assert _seconds(server["stop_grace_period"]) >= limit + ANSWER_GRACE_S + 5
