"""`ddgan bench gpu` (= `python -m ddgan.bench.gpu.validate`): the GPU validation run of issue 18, one command.

Stages, in this order, each in its own process group with its own time limit, so that a hung CUDA call or server
cannot take the others' time, and what a stage recorded before its limit is kept:
  env          machine, versions, imports with the carried wheels
  tests        the suite's `gpu`-marked tests
  correctness  device vs CPU fp32 (fp32, tf32, bf16, fp16) for mnist, cifar10, celebahq; CUDA-graph replay vs eager
  throughput   images/s for eager fp32, eager bf16, CUDA graphs bf16 against the bf16 FLOP floor
  serve        `ddgan serve` end to end (celebahq, random weights) against its raw sampler
  quality      the bundled DDPM at 1000 steps on seeds 0..9999, as a `ddgan eval --samples` archive to score here
  compile      torch.compile bf16, last: its compile time is the least predictable
A failed stage records its error and the run goes on; the exit status is 0 only when every stage passed.
Results (rewritten after every stage): results.json, results.md, log.txt and quality-mnist-ddpm.npz in --results
(default $DDGAN_GPU_RESULTS, else $OUT, else out/gpu-validation). `--cpu-smoke` runs the same stages on the CPU at tiny
sizes; tests/bench/test_gpu_script.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ddgan.bench.gpu.common import REPO, STAGES, Plan, StageRecord, describe_error, plan_for, read_stage_file
from ddgan.bench.gpu.report import markdown, stage_table

STAGE_MODULES = {
    "env": "ddgan.bench.gpu.env",
    "tests": "ddgan.bench.gpu.gputests",
    "correctness": "ddgan.bench.gpu.correctness",
    "throughput": "ddgan.bench.gpu.speed",
    "serve": "ddgan.bench.gpu.serving",
    "quality": "ddgan.bench.gpu.quality",
    "compile": "ddgan.bench.gpu.speed",
}
GRACE_S = 15.0  # a stage stops starting work at its budget; its process group is killed this much later
MIN_STAGE_S = 10.0  # a stage is not started with less of the run's budget left
STATUS = {0: "passed", 1: "failed"}  # any other exit status is "error"; no exit at all is "timed out"

# (stage name, its stage file, its deadline as time.time()) -> the command that runs the stage
CommandFor = Callable[[str, Path, float], list[str]]


def stage_command(smoke: bool, results_dir: Path) -> CommandFor:
    def command(name: str, stage_file: Path, deadline: float) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "ddgan.bench.gpu.validate",
            "--run-stage",
            name,
            "--stage-file",
            str(stage_file),
            "--deadline",
            f"{deadline:.1f}",
            "--results",
            str(results_dir),
        ]
        return argv + (["--cpu-smoke"] if smoke else [])

    return command


def run_process(command: Sequence[str], timeout_s: float, log_path: Path) -> tuple[int | None, float]:
    """(exit status, or None when it ran past `timeout_s` and its process group was killed; seconds)."""
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout_s), time.monotonic() - started
        except subprocess.TimeoutExpired:
            pass
        # SIGTERM lets a spawned server shut down; SIGKILL then takes whatever of the group is left.
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait_s)
        return None, time.monotonic() - started


def _log_tail(log_path: Path, since: int) -> str:
    """The last meaningful line a stage wrote to the log (its error, usually)."""
    with log_path.open("rb") as log:
        log.seek(since)
        lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


def run_stages(
    plan: Plan, names: Sequence[str], results_dir: Path, command_for: CommandFor, budget_s: float, command: str
) -> dict[str, Any]:
    """Every stage in turn; results.json / results.md / log.txt rewritten after each. Returns the results."""
    results_dir.mkdir(parents=True, exist_ok=True)
    log_path = results_dir / "log.txt"
    log_path.write_text(f"# {command}\n")
    started, run_deadline = time.monotonic(), time.time() + budget_s
    results: dict[str, Any] = {
        "mode": plan.mode,
        "command": command,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "budget_s": budget_s,
        "seconds": 0.0,
        "passed": False,
        "stages": [],
    }
    with tempfile.TemporaryDirectory(prefix="ddgan-gpu-stages-") as work:
        for name in names:
            left = run_deadline - time.time()
            budget = min(plan.budgets.get(name, left), left)
            stage: dict[str, Any] = {"name": name, "status": "skipped", "seconds": 0.0, "budget_s": max(budget, 0.0)}
            if budget < MIN_STAGE_S:
                stage.update(summary="not started: the run's budget is spent", rows=[], notes=[])
            else:
                print(f"[gpu-validate] {name}: running (budget {budget:.0f} s)", flush=True)
                stage_file = Path(work) / f"{name}.json"
                with log_path.open("a") as log:
                    log.write(f"\n===== stage {name} (budget {budget:.0f} s) =====\n")
                offset = log_path.stat().st_size
                argv = command_for(name, stage_file, time.time() + budget)
                returncode, seconds = run_process(argv, budget + GRACE_S, log_path)
                status = "timed out" if returncode is None else STATUS.get(returncode, "error")
                stage.update(read_stage_file(stage_file), status=status, seconds=seconds, returncode=returncode)
                if status != "passed":
                    killed = f"killed after {seconds:.0f} s (budget {budget:.0f} s)"
                    stage["error"] = killed if returncode is None else _log_tail(log_path, offset)
                    stage["summary"] = stage["summary"] or stage["error"]
            print(f"[gpu-validate] {name}: {stage['status']} in {stage['seconds']:.0f} s", flush=True)
            results["stages"].append(stage)
            results["seconds"] = time.monotonic() - started
            results["passed"] = len(results["stages"]) == len(names) and all(
                s["status"] == "passed" for s in results["stages"]
            )
            write_results(results, results_dir)
    return results


def write_results(results: dict[str, Any], results_dir: Path) -> None:
    from ddgan.model.checkpoint import atomic_write_bytes

    atomic_write_bytes(results_dir / "results.json", (json.dumps(results, indent=1, default=str) + "\n").encode())
    atomic_write_bytes(results_dir / "results.md", markdown(results).encode())


def run_one_stage(name: str, plan: Plan, stage_file: Path, deadline: float, results_dir: Path) -> int:
    """Inside a stage's process: 0 passed, 1 a check failed, 2 the stage itself broke (its traceback is logged)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = StageRecord(stage_file, deadline, results_dir)
    record.flush()
    try:
        if plan.torch_threads:
            import torch

            torch.set_num_threads(plan.torch_threads)
        module = importlib.import_module(STAGE_MODULES[name])
        return 0 if module.run(name, plan, record) else 1
    except (Exception, SystemExit) as exc:  # SystemExit: the serve helpers report a dead server that way
        traceback.print_exc()
        message = describe_error(exc)
        record.note(f"stage error: {message}")
        print(f"stage error: {message}", flush=True)
        return 2


def default_results_dir() -> Path:
    chosen = os.environ.get("DDGAN_GPU_RESULTS") or os.environ.get("OUT")
    return Path(chosen) if chosen else REPO / "out" / "gpu-validation"


def _stage_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-smoke", action="store_true", help="every stage on the CPU at tiny sizes (seconds)")
    parser.add_argument(
        "--results", type=Path, help="results folder (default $DDGAN_GPU_RESULTS, else $OUT, else out/gpu-validation)"
    )
    parser.add_argument("--stages", type=_stage_list, default=list(STAGES), help=f"subset of {','.join(STAGES)}")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole run (default: the plan's, 470 on a GPU)")
    parser.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)  # inside a stage's process
    parser.add_argument("--stage-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gpu",
        help="GPU validation run: tests, correctness, throughput, serving (bench/gpu)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    plan = plan_for(args.cpu_smoke)
    results_dir = args.results or default_results_dir()
    if args.run_stage:
        return run_one_stage(args.run_stage, plan, args.stage_file, args.deadline, results_dir)
    command = "python -m ddgan.bench.gpu.validate " + shlex.join(sys.argv[1:])
    command_for = stage_command(args.cpu_smoke, results_dir)
    results = run_stages(plan, args.stages, results_dir, command_for, args.budget_s or plan.total_budget, command)
    verdict = "all stages passed" if results["passed"] else "NOT all stages passed"
    print(f"\nGPU validation ({plan.mode}), {results['seconds']:.0f} s: {verdict}; full results in {results_dir}")
    print(stage_table(results["stages"]), flush=True)
    return 0 if results["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddgan.bench.gpu.validate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
