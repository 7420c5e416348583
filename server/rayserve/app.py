"""The Ray Serve application: one deployment per registry model, a metrics hub, and the HTTP ingress.

`build_app(args)` is the import path of `serve run` / `serve deploy` (docker/ray/serve-config.yaml) and of
`ddgan serve --engine ray`. `args` are `ServerSettings` fields (`registry`, `random_weights`, `device`, ...) plus
`ingress_replicas`. Each model's replicas, resources and autoscaling come from its registry entry's `scaling`
table (`ReplicaScaling`); models whose weights are absent get no deployment and answer 404 with the install
command, as in the native server.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.types import Message, Receive, Scope, Send

from ddgan.server.app import create_app
from ddgan.server.rayserve.engine import RayEngine, model_installed_here
from ddgan.server.rayserve.metrics_hub import MetricsHub
from ddgan.server.rayserve.replica import ModelReplica, replica_name
from ddgan.server.registry import ModelEntry, Registry, load_registry
from ddgan.server.settings import ServerSettings

INGRESS = "ingress"
HUB = "metrics-hub"
# Requests the ingress takes at once: it only awaits the model deployments, which bound the real work.
INGRESS_MAX_ONGOING_REQUESTS = 1024


def deployment_name(entry: ModelEntry) -> str:
    """`mnist-ddgan`: Serve names allow no `/`."""
    return re.sub(r"[^a-z0-9_\-]", "-", f"{entry.dataset}-{entry.sampler}")


def gpus_per_replica(entry: ModelEntry, settings: ServerSettings, cluster_has_gpus: bool) -> float:
    if entry.scaling.num_gpus is not None:
        return entry.scaling.num_gpus
    device = settings.device or entry.device
    if device.startswith("cuda"):
        return 1.0
    return 1.0 if device == "auto" and cluster_has_gpus else 0.0


def deployment_options(entry: ModelEntry, settings: ServerSettings, cluster_has_gpus: bool) -> dict[str, Any]:
    """Serve options of one model's deployment, from its registry entry (`ReplicaScaling`)."""
    scaling = entry.scaling
    autoscaling = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "initial_replicas": scaling.initial_replicas or scaling.min_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "look_back_period_s": scaling.look_back_period_s,
    }
    return {
        "name": deployment_name(entry),
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": scaling.max_ongoing_requests,
        "max_queued_requests": scaling.max_queued_requests,
        "ray_actor_options": {
            "num_cpus": scaling.num_cpus,
            "num_gpus": gpus_per_replica(entry, settings, cluster_has_gpus),
        },
        # Serve waits this long for queued work when a replica stops (scale-down, redeploy).
        "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
        "health_check_period_s": 5,
    }


def replica_settings(entry: ModelEntry, settings: ServerSettings) -> ServerSettings:
    """A replica's settings: torch threads default to the CPUs it was given."""
    threads = settings.torch_threads or max(1, int(entry.scaling.num_cpus))
    return settings.model_copy(update={"torch_threads": threads})


class WithoutOwnRequestId:
    """Serve's proxy adds `X-Request-ID` to every response, the id our middleware adopted from the request it
    forwarded: ours is dropped so that clients see the header once, with the id the error bodies carry."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_once)


@serve.ingress()
class Ingress:
    """The HTTP entry point: `create_app` over a `RayEngine`, i.e. exactly the native server's routes."""

    def __init__(self, settings: ServerSettings, registry: Registry, deployments: dict[str, Any], hub: Any) -> None:
        self.settings = settings
        self.registry = registry
        self.deployments = deployments
        self.hub = hub

    def __serve_build_asgi_app__(self) -> WithoutOwnRequestId:
        replica = replica_name(INGRESS)
        factory = functools.partial(RayEngine, deployments=self.deployments, hub=self.hub, replica=replica)
        return WithoutOwnRequestId(create_app(self.settings, registry=self.registry, engine_factory=factory))


def build(settings: ServerSettings, registry: Registry, *, ingress_replicas: int = 1) -> Application:
    cluster_has_gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    hub = serve.deployment(name=HUB, num_replicas=1, ray_actor_options={"num_cpus": 0})(MetricsHub).bind()
    deployments: dict[str, Any] = {}
    for entry in registry.models:
        if not model_installed_here(entry, settings.random_weights):
            continue  # the ingress answers 404 with the install command
        options = deployment_options(entry, settings, cluster_has_gpus)
        replica = serve.deployment(**options)(ModelReplica)
        deployments[entry.name] = replica.bind(entry, replica_settings(entry, settings), hub)
    ingress = serve.deployment(
        name=INGRESS,
        num_replicas=ingress_replicas,
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": 0},
    )(Ingress)
    return ingress.bind(settings, registry, deployments, hub)


def build_app(args: dict[str, Any]) -> Application:
    """Import path of the Serve config file: `ddgan.server.rayserve.app:build_app`."""
    args = dict(args)
    ingress_replicas = int(args.pop("ingress_replicas", 1))
    settings = ServerSettings(**args)
    return build(settings, load_registry(settings.registry), ingress_replicas=ingress_replicas)
