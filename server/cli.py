"""`ddgan serve`: run the inference server under uvicorn (flags override `DDGAN_*` environment settings)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the registry's models over HTTP (POST /generate)",
        description="Serve DDGAN models (and their DDPM baselines) with dynamic batching. Every option can also "
        "be set as an environment variable DDGAN_<OPTION> (e.g. DDGAN_API_KEY); flags win.",
    )
    parser.add_argument("--registry", help="model registry TOML (default: models/registry.toml)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument(
        "--random-weights",
        action="store_const",
        const=True,
        help="serve every architecture with random weights: for latency work only (responses and metrics say so)",
    )
    parser.add_argument(
        "--models", help="serve only these registry models: comma list of dataset or dataset/sampler (default all)"
    )
    parser.add_argument("--device", help="override every model's device: cpu, cuda, cuda:N, auto")
    parser.add_argument("--backend", help="override every DDGAN model's backend: torch, onnxruntime, tensorrt ...")
    parser.add_argument("--max-images-per-request", type=int, help="upper bound of n (default 64)")
    parser.add_argument("--request-timeout-s", type=float, help="per-request deadline, 504 past it (default 120)")
    parser.add_argument("--png-workers", type=int, help="PNG encoding threads (default min(4, CPUs))")
    parser.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads (default: the CPUs this process may use)"
    )
    parser.add_argument("--no-warmup", dest="warmup", action="store_const", const=False, help="skip warm-up")
    parser.add_argument("--log-level", help="critical, error, warning, info (default), debug")
    parser.add_argument(
        "--engine",
        choices=("native", "ray"),
        default="native",
        help="native: this process (default); ray: one Ray Serve deployment per model, autoscaled (extra .[ray])",
    )
    parser.add_argument(
        "--ray-address",
        help="--engine ray: a running cluster (auto, ray://host:10001); default: start a local one",
    )
    parser.add_argument("--ingress-replicas", type=int, default=1, help="--engine ray: HTTP ingress replicas")
    parser.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    from ddgan.server.settings import ServerSettings

    fields = (
        "registry", "host", "port", "models", "random_weights", "device", "backend", "max_images_per_request",
        "request_timeout_s", "png_workers", "torch_threads", "warmup", "log_level",
    )  # fmt: skip
    overrides = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    return ServerSettings(**overrides)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ddgan.server.app import create_app
    from ddgan.server.http_server import ShutdownAwareServer, limited_http_protocol, uvicorn_shutdown_timeout
    from ddgan.server.registry import RegistryError

    try:
        settings = settings_from_args(args)
        if getattr(args, "engine", "native") == "ray":
            return _serve_on_ray(settings, args)
        app = create_app(settings)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        sys.stderr.write(f"ddgan serve: invalid setting: {fields}\n")
        return 2
    except RegistryError as exc:
        sys.stderr.write(f"ddgan serve: {exc}\n")
        return 2
    level = settings.log_level.upper() if settings.log_level != "trace" else "DEBUG"
    # Our loggers at the server's level; third-party libraries stay at WARNING unless debugging.
    logging.getLogger("ddgan").setLevel(level)
    if level == "DEBUG":
        logging.getLogger().setLevel(level)
    logger.info("serving %s on http://%s:%d", settings.registry, settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=uvicorn_shutdown_timeout(settings.shutdown_timeout_s),
        http=limited_http_protocol(settings.max_header_bytes, settings.header_timeout_s, app.state.count_rejected),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        access_log=settings.log_level in ("debug", "trace"),
    )
    server = ShutdownAwareServer(config, app.state.engine.begin_shutdown, settings.shutdown_timeout_s)
    server.run()
    return 0 if server.started else 3


def _serve_on_ray(settings: Any, args: argparse.Namespace) -> int:
    try:
        from ddgan.server.rayserve.launch import serve_on_ray
    except ImportError as exc:
        sys.stderr.write(f"ddgan serve --engine ray needs Ray Serve: pip install -e '.[ray]' ({exc})\n")
        return 3
    logging.getLogger().setLevel(settings.log_level.upper() if settings.log_level != "trace" else "DEBUG")
    return serve_on_ray(settings, address=args.ray_address, ingress_replicas=args.ingress_replicas)
