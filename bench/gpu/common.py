"""What the GPU validation run measures (the GPU plan, or the CPU smoke plan of the same code at small sizes),
and the record each stage writes as it goes, so that a stage killed at its time limit still leaves its rows.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
STAGES = ("env", "tests", "correctness", "throughput", "serve", "quality", "compile")


@dataclass(frozen=True)
class Plan:
    """Sizes and time limits of one run; `smoke` runs everything on the CPU at sizes that take seconds."""

    smoke: bool
    device: str
    correctness: dict[str, int]  # preset -> batch
    graph_precisions: tuple[str, ...]  # precisions whose CUDA-graph replay is compared with eager
    throughput: dict[str, tuple[int, ...]]  # preset -> batch sizes
    warmup: int
    repeats: int
    serve_dataset: str
    serve_registry_overrides: dict[str, Any]
    serve_n: int
    serve_requests: int
    serve_concurrency: int
    serve_torch_threads: int | None
    quality_model: str  # a models/ directory sampled for the quality stage's archive
    quality_steps: int | None  # None: the model's serving default (1000 for the DDPM)
    quality_n: int
    quality_batch: int
    torch_threads: int | None  # of every stage process (None: torch's choice)
    raw_seconds: float
    budgets: dict[str, float]  # stage -> the most seconds it may take
    total_budget: float  # the whole run, all stages

    @property
    def mode(self) -> str:
        return "cpu-smoke" if self.smoke else "gpu"


GPU_PLAN = Plan(
    smoke=False,
    device="cuda",
    correctness={"mnist": 8, "cifar10": 4, "celebahq": 2},
    graph_precisions=("fp32", "bf16"),
    throughput={"celebahq": (1, 16, 64, 100), "cifar10": (1, 16, 256)},
    warmup=2,
    repeats=5,
    serve_dataset="celebahq",
    serve_registry_overrides={},  # models/registry.toml's celebahq entry as a user gets it
    serve_n=16,
    serve_requests=24,
    serve_concurrency=4,
    serve_torch_threads=None,
    quality_model="mnist-ddpm",
    quality_steps=None,
    quality_n=10000,
    quality_batch=2500,
    torch_threads=None,
    raw_seconds=3.0,
    # Ceilings: a healthy run needs about half of each; compile, last, gets what is left of the run's budget.
    budgets={"env": 40, "tests": 90, "correctness": 80, "throughput": 110, "serve": 90, "quality": 120, "compile": 240},
    total_budget=470,  # under 8 minutes, with the wheel install and start-up around it
)

SMOKE_PLAN = Plan(
    smoke=True,
    device="cpu",
    correctness={"mnist": 2},
    graph_precisions=("fp32", "bf16"),
    throughput={"mnist": (1, 2)},
    warmup=1,
    repeats=2,
    serve_dataset="mnist",
    serve_registry_overrides={"device": "cpu", "max_batch_images": 2, "max_queue_images": 8},
    serve_n=2,
    serve_requests=3,
    serve_concurrency=2,
    serve_torch_threads=1,
    quality_model="mnist-ddpm",
    quality_steps=5,
    quality_n=4,
    quality_batch=2,
    torch_threads=1,  # two threads on an oversubscribed 2-core machine wait on each other (docs/benchmarks.md)
    raw_seconds=0.2,
    # Ceilings for a shared 2-core machine (under load 20 a stage took up to 100 s); an idle one needs a fraction.
    budgets={
        "env": 180,
        "tests": 240,
        "correctness": 240,
        "throughput": 240,
        "serve": 240,
        "quality": 120,
        "compile": 120,
    },
    total_budget=1200,
)


def plan_for(smoke: bool) -> Plan:
    return SMOKE_PLAN if smoke else GPU_PLAN


@dataclass
class StageRecord:
    """A stage's rows, notes and one-line summary, rewritten to `path` after every change."""

    path: Path
    deadline: float  # time.time() past which the stage should stop starting new work
    results_dir: Path  # where a stage's own files go (they come back with results.json)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: str = ""

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        self.flush()
        logger.info("row: %s", json.dumps(row, default=str))  # the log shows progress even if the stage is killed
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.flush()

    def set_summary(self, text: str) -> None:
        self.summary = text
        self.flush()

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def flush(self) -> None:
        from ddgan.model.checkpoint import atomic_write_bytes

        data = {"rows": self.rows, "notes": self.notes, "summary": self.summary}
        atomic_write_bytes(self.path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def read_stage_file(path: Path) -> dict[str, Any]:
    """What a stage process left behind (nothing when it died before writing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"rows": [], "notes": [], "summary": ""}
    return {"rows": data.get("rows", []), "notes": data.get("notes", []), "summary": data.get("summary", "")}


def describe_error(exc: BaseException) -> str:
    """One line for a table cell: the exception type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
