"""Stage `tests`: the suite's `gpu`-marked tests (`pytest -m gpu`), one row per test from pytest's JUnit report.

Only the test files that carry the marker are collected: other files may import packages the GPU host lacks,
and their collection errors would fail the run for tests that were never asked for.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from ddgan.bench.gpu.common import REPO, Plan, StageRecord

MARKER = "pytest.mark.gpu"


def gpu_test_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("test_*.py") if MARKER in path.read_text(errors="replace"))


def junit_rows(report: Path) -> list[dict[str, str]]:
    """(test, outcome, message) for every test case in a JUnit XML report."""
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                text = (child.get("message") or child.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        rows.append(
            {"test": f"{case.get('classname', '')}::{case.get('name', '')}", "outcome": outcome, "message": message}
        )
    return rows


def run(stage: str, plan: Plan, record: StageRecord) -> bool:
    files = gpu_test_files(REPO / "tests")
    if not files:
        record.set_summary("no test file carries the gpu marker")
        return False
    with tempfile.TemporaryDirectory(prefix="ddgan-gpu-tests-") as work:
        report = Path(work) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            f"--junitxml={report}",
            *(str(f.relative_to(REPO)) for f in files),
        ]
        record.note("command: " + " ".join(command[1:]))
        # Leave a few seconds of the stage's budget to record what pytest did before the stage is stopped.
        try:
            done = subprocess.run(command, cwd=REPO, timeout=max(5.0, record.seconds_left() - 5), check=False)
            returncode: int | None = done.returncode
        except subprocess.TimeoutExpired:
            returncode = None
            record.note("pytest stopped at the stage's time limit")
        rows = junit_rows(report) if report.is_file() else []
    for row in rows:
        record.add(**row)
    counts = Counter(row["outcome"] for row in rows)
    ran = counts["passed"] + counts["failed"] + counts["error"]
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no test ran"
    record.set_summary(f"{summary} (pytest exit {returncode})")
    if returncode != 0:
        return False
    if not plan.smoke and ran == 0:  # every gpu test skipped: pytest did not see the GPU
        record.note("every gpu test was skipped on a GPU run")
        return False
    return True
