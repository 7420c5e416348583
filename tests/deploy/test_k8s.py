"""docker/k8s/: every overlay renders, validates against the Kubernetes schemas (custom resources against their
CRDs' structure), and agrees with the server it deploys: probe routes, metric names, image user, Ray app."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import DOCKERFILE
from tests.deploy.k8s import (
    K8S,
    OVERLAYS,
    SERVE_CONFIG,
    kustomize_command,
    of_kind,
    one,
    pod_specs,
    read,
    render,
    serve_applications,
)
from tests.deploy.promql import exported_names, metric_names

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (dev extra)")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.skipif(kustomize_command() is None, reason="needs kubectl or kustomize")

K8S_VERSION = "1.33"  # the oldest Kubernetes the manifests target (autoscaling/v2, policy/v1)
CRD_SCHEMAS = Path(__file__).parent / "data" / "crd_schemas.yaml"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "ScaledObject", "RayService"}


def server_routes() -> set[str]:
    """The paths the app serves: the routers `create_app` includes (without building the app and its models)."""
    from ddgan.server.routes import generate, health, models

    return {route.path for module in (generate, health, models) for route in module.router.routes}


def server_metric_names() -> set[str]:
    from ddgan.server.metrics import ServerMetrics

    return exported_names(ServerMetrics().render().decode())


def image_uid() -> int:
    match = re.search(r"useradd [^\n]*--uid (\d+)", DOCKERFILE.read_text())
    assert match, "the Dockerfile creates no user with a fixed uid"
    return int(match.group(1))


def validate_custom(doc: dict[str, Any]) -> None:
    schemas = read(CRD_SCHEMAS)
    schema = {**schemas["kinds"][f"{doc['apiVersion']}/{doc['kind']}"], "definitions": schemas["definitions"]}
    jsonschema.validate(doc, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_validates(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            validate_custom(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # The pod templates inside a RayService are Kubernetes PodTemplateSpecs.
    for service in of_kind(docs, "RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        for template in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    # The validators are not vacuous: an unknown key fails in a core object and in a custom resource.
    deployment = yaml.safe_load(yaml.safe_dump(one(render("gpu"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(one(render("gpu-keda"), "ScaledObject")))
    scaled["spec"]["maxReplicas"] = 8
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(scaled)


def test_overlays_have_what_they_promise() -> None:
    kinds = {overlay: sorted(d["kind"] for d in render(overlay)) for overlay in OVERLAYS}
    base = ["ConfigMap", "Deployment", "Namespace", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    assert kinds["gpu"] == sorted([*base, "HorizontalPodAutoscaler", "ServiceMonitor"])
    assert kinds["cpu"] == kinds["gpu"]
    assert kinds["gpu-keda"] == sorted([*base, "ScaledObject", "ServiceMonitor"])  # KEDA owns the HPA itself
    assert kinds["ray"] == ["PersistentVolumeClaim", "PodMonitor", "RayService"]


def container(overlay: str) -> dict[str, Any]:
    return one(render(overlay), "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in spec.get("env", [])}


def test_gpu_overlay_takes_one_gpu_and_cpu_overlay_none() -> None:
    gpu, cpu = container("gpu"), container("cpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert env(gpu)["DDGAN_DEVICE"] == "cuda"
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert env(cpu)["DDGAN_DEVICE"] == "cpu"
    assert env(cpu)["DDGAN_TORCH_THREADS"] == str(cpu["resources"]["requests"]["cpu"])
    for spec in (gpu, cpu):
        assert {"cpu", "memory"} <= set(spec["resources"]["requests"])
    assert container("gpu")["image"].endswith(":0.2.0") and container("cpu")["image"].endswith(":0.2.0-cpu")


def test_probes_point_at_real_routes_and_ports() -> None:
    routes = server_routes()
    for overlay in ("gpu", "cpu", "gpu-keda"):
        spec = container(overlay)
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        assert ports == {"http": int(env(spec)["DDGAN_PORT"])}
        probes = {name: spec[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
        for probe in probes.values():
            assert probe["path"] in routes and probe["port"] in ports
        # Ready means warmed up; alive only means the process answers (a slow warm-up is not a crash).
        assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/readyz"
        assert probes["livenessProbe"]["path"] == "/healthz"


def test_pods_run_as_the_image_user_without_privileges() -> None:
    uid = image_uid()
    for overlay in OVERLAYS:
        for pod in pod_specs(render(overlay)):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == uid
            for spec in [*pod.get("initContainers", []), *pod["containers"]]:
                assert spec["securityContext"]["allowPrivilegeEscalation"] is False
                assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_models_volume_holds_the_registry() -> None:
    for overlay in OVERLAYS:
        docs = render(overlay)
        claims = {pvc["metadata"]["name"] for pvc in of_kind(docs, "PersistentVolumeClaim")}
        for pod in pod_specs(docs):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for spec in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
                assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] in claims
    assert env(container("gpu"))["DDGAN_REGISTRY"].startswith("/models/")


def test_selectors_match_the_pods() -> None:
    docs = render("gpu")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(docs, kind)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"} <= server_routes()
    for kind in ("HorizontalPodAutoscaler",):
        target = one(docs, kind)["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", one(docs, "Deployment")["metadata"]["name"])


def adapter_rules() -> list[dict[str, Any]]:
    config_map = one(render("gpu"), "ConfigMap")
    rules: list[dict[str, Any]] = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    return rules


def test_autoscalers_scale_on_a_queue_depth_the_server_exports() -> None:
    exported = server_metric_names()
    (rule,) = adapter_rules()
    series = metric_names(rule["seriesQuery"])
    assert series == {"ddgan_queued_images"} <= exported
    query = rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
    query = query.replace("<<.LabelMatchers>>", 'namespace="ddgan"').replace("<<.GroupBy>>", "pod")
    assert metric_names(query) == series
    hpa = one(render("gpu"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    published = re.sub(rule["name"]["matches"], rule["name"]["as"], next(iter(series)))
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == published

    scaled = one(render("gpu-keda"), "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert metric_names(trigger["metadata"]["query"]) == series
    # Both scale to the same count for the same queue: KEDA's threshold is the HPA's per-pod average.
    assert trigger["metadata"]["threshold"] == metric["pods"]["target"]["averageValue"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )


def test_ray_service_runs_the_serve_config_application() -> None:
    service = one(render("ray"), "RayService")
    embedded = serve_applications(service["spec"]["serveConfigV2"])
    assert embedded == serve_applications(SERVE_CONFIG.read_text())
    (app,) = embedded
    module, _, function = app["import_path"].partition(":")
    source = (K8S.parents[1] / module.removeprefix("ddgan.").replace(".", "/")).with_suffix(".py").read_text()
    assert re.search(rf"^def {function}\(args", source, re.MULTILINE), app["import_path"]
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin()
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1 for w in workers)
    monitor = one(render("ray"), "PodMonitor")
    head_ports = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    serve_port = next(p for p in head_ports if p["name"] == monitor["spec"]["podMetricsEndpoints"][0]["port"])
    assert serve_port["containerPort"] == yaml.safe_load(service["spec"]["serveConfigV2"])["http_options"]["port"]


def ray_pin() -> str:
    pyproject = (K8S.parents[1] / "pyproject.toml").read_text()
    match = re.search(r'ray = \["ray\[serve\]==([^"]+)"\]', pyproject)
    assert match
    return match.group(1)
