"""What the Ray engine takes from the registry and gives Prometheus, checked without a cluster: the `scaling`
table, the Serve options built from it, and a page merged from several replicas' series."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ddgan.server.metrics import ServerMetrics, render_replicas, snapshot
from ddgan.server.registry import RegistryError, parse_registry
from ddgan.server.settings import ServerSettings


def entry(**scaling: object) -> dict[str, object]:
    return {"dataset": "mnist", "path": "mnist", "device": "cpu", "scaling": scaling}


def test_scaling_defaults_and_bounds(tmp_path: Path) -> None:
    (default,) = parse_registry({"models": [entry()]}, tmp_path).models
    assert (default.scaling.min_replicas, default.scaling.max_replicas) == (1, 1)
    assert default.scaling.downscale_delay_s == 600 and default.scaling.num_gpus is None
    for bad, field in (
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas (2) is below min_replicas (3)"),
        ({"max_replicas": 4, "initial_replicas": 5}, "initial_replicas (5) is outside"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"replicas": 2}, "replicas"),
    ):
        with pytest.raises(RegistryError, match=field.replace("(", r"\(").replace(")", r"\)")):
            parse_registry({"models": [entry(**bad)]}, tmp_path)


def test_serve_options_come_from_the_registry(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="needs the ray extra")
    from ddgan.server.rayserve.app import deployment_name, deployment_options, replica_settings

    scaling = {"min_replicas": 2, "max_replicas": 5, "upscale_delay_s": 3, "num_cpus": 2, "max_queued_requests": 7}
    (model,) = parse_registry({"models": [entry(**scaling)]}, tmp_path).models
    settings = ServerSettings(registry=tmp_path / "r.toml")
    options = deployment_options(model, settings, cluster_has_gpus=True)
    assert options["name"] == deployment_name(model) == "mnist-ddgan"
    autoscaling = options["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["initial_replicas"], autoscaling["max_replicas"]) == (2, 2, 5)
    assert autoscaling["upscale_delay_s"] == 3 and autoscaling["downscale_delay_s"] == 600
    assert options["max_queued_requests"] == 7 and options["max_ongoing_requests"] == 8
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.0}  # device cpu: no GPU even if present
    assert replica_settings(model, settings).torch_threads == 2
    (auto,) = parse_registry({"models": [{**entry(), "device": "auto"}]}, tmp_path).models
    assert deployment_options(auto, settings, cluster_has_gpus=True)["ray_actor_options"]["num_gpus"] == 1.0
    assert deployment_options(auto, settings, cluster_has_gpus=False)["ray_actor_options"]["num_gpus"] == 0.0


def test_merged_page_labels_every_replica_and_sums_to_the_total() -> None:
    replicas = {"mnist-ddgan#a": ServerMetrics(), "mnist-ddgan#b": ServerMetrics(), "ingress#c": ServerMetrics()}
    for name, images in (("mnist-ddgan#a", 3), ("mnist-ddgan#b", 5)):
        observer = replicas[name].queue_observer("mnist", "ddgan")
        observer.batch_done(images, 0.1)
        replicas[name].set_model_info("mnist", "ddgan", "torch", "cpu", "float32", False)
    replicas["ingress#c"].observe_request("mnist", "ddgan", 200, 0.2)
    page = render_replicas({name: snapshot(metrics) for name, metrics in replicas.items()}).decode()

    families = {f.name: f for f in text_string_to_metric_families(page)}
    images = [s for s in families["ddgan_images_generated"].samples if s.name == "ddgan_images_generated_total"]
    assert {s.labels["replica"]: s.value for s in images} == {"mnist-ddgan#a": 3, "mnist-ddgan#b": 5}
    assert sum(s.value for s in images) == 8  # what `sum by (model, sampler)` on the dashboard shows
    buckets = [s for s in families["ddgan_batch_size_images"].samples if s.name.endswith("_count")]
    assert sorted(s.labels["replica"] for s in buckets) == ["mnist-ddgan#a", "mnist-ddgan#b"]
    (request,) = [s for s in families["ddgan_requests"].samples if s.name == "ddgan_requests_total" and s.value]
    assert request.labels == {"replica": "ingress#c", "model": "mnist", "sampler": "ddgan", "status": "200"}
    # One HELP/TYPE per family however many replicas: Prometheus rejects a page that repeats them.
    assert page.count("# TYPE ddgan_images_generated_total counter") == 1
