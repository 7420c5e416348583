"""`ddgan`: the command-line entry point. Each package registers its own subcommands.

Subcommand modules are imported lazily so that `ddgan serve` never imports training code and
`ddgan --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> module exposing `register(subparsers)`; one module may register several subcommands.
COMMAND_MODULES: dict[str, str] = {
    "sample": "ddgan.model.cli",
    "convert": "ddgan.model.cli",
    "train": "ddgan.training.cli",
    "train-ddpm": "ddgan.training.cli",
    "train-classifier": "ddgan.training.cli",
    "eval": "ddgan.training.cli",
    "toy": "ddgan.training.cli",
    "export": "ddgan.export.cli",
    "serve": "ddgan.server.cli",
    "bench": "ddgan.bench.cli",
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddgan", description="Few-step DDGAN image generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else sorted(set(COMMAND_MODULES.values()))
    for name in modules:
        try:
            importlib.import_module(name).register(subparsers)
        except ImportError as exc:  # an optional extra is missing: say which, keep the others usable
            if command in COMMAND_MODULES:
                raise SystemExit(f"ddgan {command}: missing dependency ({exc}); see README 'Install'") from exc
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
