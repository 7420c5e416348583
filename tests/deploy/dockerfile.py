"""A small Dockerfile reader: instructions as the builder sees them (continuations joined, comments dropped)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from tests.deploy.promql import DOCKER

DOCKERFILE = DOCKER / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to; -1 before the first FROM (global ARGs)

    def words(self) -> list[str]:
        """Exec form (JSON array) or shell-like words."""
        text = self.arguments.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return shlex.split(text)


def instructions(text: str | None = None) -> list[Instruction]:
    text = DOCKERFILE.read_text() if text is None else text
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comment lines inside a continuation are dropped by the builder
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result, stage = [], -1
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, arguments.strip(), stage))
    return result


def arg_defaults() -> dict[str, str]:
    """Every `ARG NAME=default` (global or in a stage)."""
    defaults = {}
    for instruction in instructions():
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def env(stage: int) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in instructions():
        if instruction.keyword == "ENV" and instruction.stage == stage:
            for word in shlex.split(instruction.arguments):
                name, _, value = word.partition("=")
                values[name] = value
    return values
