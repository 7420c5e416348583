"""Rendering docker/k8s/ the way `kubectl apply -k` does, and reading the rendered objects."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import DOCKER

K8S = DOCKER / "k8s"
OVERLAYS = ("gpu", "cpu", "gpu-keda", "ray")
SERVE_CONFIG = DOCKER / "ray" / "serve-config.yaml"


def kustomize_command() -> list[str] | None:
    """kubectl's built-in kustomize, or a standalone kustomize binary."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    command = kustomize_command()
    assert command is not None
    result = subprocess.run([*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_specs(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Every pod template: Deployments' and the RayService's head and worker groups."""
    specs = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
    for service in of_kind(docs, "RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        specs.append(cluster["headGroupSpec"]["template"]["spec"])
        specs += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    return specs


def serve_applications(text: str) -> list[dict[str, Any]]:
    applications: list[dict[str, Any]] = yaml.safe_load(text)["applications"]
    return applications


def read(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
