"""`ddgan serve --engine ray`: the application on a Ray cluster, this machine's unless `--ray-address` names one.

Without an address Ray starts a local cluster for this process (stopped with it); with `--ray-address auto`
or `ray://...` the application is deployed to a running cluster (`ray start --head` / `ray start
--address=...`) and this command waits until SIGINT / SIGTERM, then deletes the application.
"""

from __future__ import annotations

import logging
import signal
import threading

import ray
from ray import serve

from ddgan.server.rayserve.app import build
from ddgan.server.registry import load_registry
from ddgan.server.settings import ServerSettings

logger = logging.getLogger(__name__)

APP_NAME = "ddgan"


def serve_on_ray(settings: ServerSettings, *, address: str | None, ingress_replicas: int = 1) -> int:
    registry = load_registry(settings.registry)
    level = (
        logging.DEBUG if settings.log_level == "trace" else logging.getLevelNamesMapping()[settings.log_level.upper()]
    )
    ray.init(address=address, include_dashboard=False, logging_level=level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build(settings, registry, ingress_replicas=ingress_replicas), name=APP_NAME, route_prefix="/")
        logger.info("serving %s on Ray at http://%s:%d", settings.registry, settings.host, settings.port)
        stop.wait()
        logger.info("shutting down: deleting the application (replicas finish queued work)")
        serve.delete(APP_NAME)
        if address is None:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0
