"""A small Dockerfile reader: instructions as the builder sees them (continuations joined, comments dropped)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

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


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
            if pattern.startswith("/", i):  # `**/x` also matches `x` at the top
                parts[-1] = "(?:.*/)?"
                i += 1
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def ignore_rules(path: Path = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")) -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per line, in order; BuildKit's per-Dockerfile ignore file."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def sent_to_builder(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; `!` re-includes."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            included = negated
    return included
