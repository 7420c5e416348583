"""docker/prometheus/: the config and recording rules as promtool reads them, and the rules' results."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import PROMETHEUS_CONFIG, RULES, metric_names, recording_rules

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package prometheus)")
RULES_TEST = Path(__file__).parent / "data" / "ddgan_rules_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(recording_rules())} rules found" in result.stdout + result.stderr


@needs_promtool
def test_rules_compute_hand_checked_quantiles() -> None:
    # p50/p95/p99 per model and sampler from synthetic histograms, 503s excluded, DDPM/DDGAN ratio, rates.
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_file_loaded_by_the_config_is_this_file() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [(PROMETHEUS_CONFIG.parent / path).resolve() for path in config["rule_files"]] == [RULES.resolve()]


def test_every_sampler_quantile_is_recorded() -> None:
    rules = recording_rules()
    for quantile in ("p50", "p95", "p99"):
        record = f"model_sampler:ddgan_request_latency_seconds:{quantile}_1m"
        assert record in rules
        assert metric_names(rules[record]) == {"model_sampler:ddgan_request_latency_seconds_bucket:rate1m"}
        assert f"model:ddgan_request_latency_seconds:{quantile}_ratio_ddpm_ddgan_1m" in rules
    # Per model and sampler: the bucket rate keeps exactly those labels (and le).
    assert "sum by (model, sampler, le)" in rules["model_sampler:ddgan_request_latency_seconds_bucket:rate1m"]
