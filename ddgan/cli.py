"""`ddgan`: the command-line entry point; each package registers its own subcommands.

The overview (`ddgan --help`) imports nothing but this file; a command's module is imported only when that
command runs, so `ddgan serve` never imports training code. This is the one place (with `ddgan.bench`) that
composes every package: it registers the exporters' backends into the sampler factory before a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> (module exposing `register(subparsers)`, one-line help); a module may register several commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("ddgan.model.cli", "generate images from a model directory"),
    "convert": ("ddgan.model.cli", "convert an official netG_*.pth into a model directory"),
    "train": ("ddgan.training.cli", "train a DDGAN or SIDDM generator"),
    "train-ddpm": ("ddgan.training.cli", "train the DDPM baseline"),
    "train-classifier": ("ddgan.training.cli", "train the MNIST classifier used by ddgan eval"),
    "eval": ("ddgan.training.cli", "evaluate a model: modes, KL, Fréchet distances, FID/IS"),
    "toy": ("ddgan.training.cli", "the 2-D 25-Gaussian toy study"),
    "export": ("ddgan.export.cli", "export the sampling chain: ONNX graph, TensorRT engine"),
    "serve": ("ddgan.server.cli", "serve the registry's models over HTTP (POST /generate)"),
    "generate": ("ddgan.client.cli", "generate images on a running server (--url), jobs with a progress bar"),
    "bench": ("ddgan.bench.cli", "benchmarks: sampler, serve, backends ..."),
}
# The extra that provides a module a command may need (pyproject.toml optional-dependencies).
EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "tensorrt": "gpu",
    "lmdb": "lmdb",
    "tensorboard": "train",
    "scipy": "train",
    "torchmetrics": "train",
    "ray": "ray",
    "matplotlib": "plot",
    "openvino": "openvino",
}
# Commands that only talk to a server: no sampler backends to register (and no torch import).
REMOTE_COMMANDS = frozenset({"generate"})
EXIT_USAGE = 2


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddgan", description="Few-step DDGAN image generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, third-party INFO included")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(subparsers)
    else:
        for name, (_, help_text) in COMMANDS.items():
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def missing_extra_message(command: str, exc: ModuleNotFoundError) -> str:
    """One line naming the extra that installs a missing module, or the module when no extra has it."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return f"ddgan {command}: missing Python module {module or exc}; see README 'Install'"
    return f"ddgan {command}: needs the '{extra}' extra (missing module {module}): pip install -e '.[{extra}]'"


def configure_logging(verbose: bool) -> None:
    """Our INFO lines; third-party libraries at WARNING unless --verbose (onnxscript alone logs ~900 lines)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("ddgan").setLevel(logging.DEBUG if verbose else logging.INFO)


def register_backends() -> None:
    """The exporters' backends join the sampler factory (the torch ones are always there)."""
    from ddgan.export.backends import register

    register()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        configure_logging(args.verbose)
        if not getattr(args, "handler", None):
            parser.print_help()
            return EXIT_USAGE
        if command not in REMOTE_COMMANDS:
            register_backends()
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as exc:
        sys.stderr.write(missing_extra_message(command or "", exc) + "\n")
        return EXIT_USAGE
