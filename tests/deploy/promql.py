"""Reading the deployment files the way their consumers do: PromQL metric names, dashboard queries, rule files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "ddgan.json"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULES = DOCKER / "prometheus" / "rules" / "ddgan.rules.yml"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, label names and durations excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)
    names = {m.group(1) for m in _IDENTIFIER.finditer(text)}
    return {n for n in names if n not in _KEYWORDS and not re.fullmatch(r"(?i)inf|nan", n)}


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    legend: str
    instant: bool


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: dict) -> list[PanelQuery]:
    queries = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            queries.append(
                PanelQuery(
                    panel=panel["title"],
                    ref_id=target["refId"],
                    expr=target["expr"],
                    legend=target.get("legendFormat", ""),
                    instant=bool(target.get("instant")) and not target.get("range"),
                )
            )
    return queries


def substitute(expr: str, rate_interval: str, model: str = ".*") -> str:
    """What Grafana sends Prometheus: template variables replaced (`$model` set to All = its allValue)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    expr = expr.replace("${model}", model).replace("$model", model)
    if "$" in expr:
        raise ValueError(f"unsubstituted Grafana variable in {expr!r}")
    return expr


def recording_rules() -> dict[str, str]:
    """record name -> expression, from the Prometheus rule file."""
    data = yaml.safe_load(RULES.read_text())
    return {rule["record"]: rule["expr"] for group in data["groups"] for rule in group["rules"] if "record" in rule}


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a /metrics page exposes, with the histogram and counter suffixes Prometheus stores."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def resolve_to_exported(name: str, rules: dict[str, str], exported: set[str], seen: frozenset = frozenset()) -> bool:
    """True when `name` is exported, or a recording rule whose expression only uses names that resolve."""
    if name in exported:
        return True
    if name not in rules or name in seen:
        return False
    return all(resolve_to_exported(n, rules, exported, seen | {name}) for n in metric_names(rules[name]))
