"""The GPU validation script (bench/gpu): its CPU smoke mode end to end, and the stage runner's fail-soft rules."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddgan.bench.gpu import validate
from ddgan.bench.gpu.common import SMOKE_PLAN, STAGES
from ddgan.bench.gpu.gputests import gpu_test_files, junit_rows
from ddgan.bench.gpu.wheels import download_command, problems, read_pins
from ddgan.training.sample_folders import read_sample_folders

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run of `bash bench/gpu/run.sh --cpu-smoke`, as on the device but without wheels or a GPU."""
    results = tmp_path_factory.mktemp("gpu-results")
    env = {**os.environ, "DDGAN_GPU_RESULTS": str(results), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "DDGAN_GPU_WHEELS": str(tmp_path_factory.mktemp("no-wheels"))}  # fmt: skip
    done = subprocess.run(
        ["bash", "bench/gpu/run.sh", "--cpu-smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500
    )
    return done, results


@pytest.mark.slow
def test_cpu_smoke_runs_every_stage_and_passes(smoke: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, results = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((results / "results.json").read_text())
    assert data["mode"] == "cpu-smoke" and data["passed"] is True
    assert [s["name"] for s in data["stages"]] == list(STAGES)
    assert all(s["status"] == "passed" for s in data["stages"])
    # The short table is the last thing printed: one line per stage.
    last = done.stdout.strip().splitlines()[-len(STAGES) :]
    assert [line.split("|")[1].strip() for line in last] == list(STAGES)
    # What a device run sends back: at most 8 plain files in the results folder.
    assert sorted(p.name for p in results.iterdir()) == [
        "log.txt", "quality-mnist-ddpm.npz", "results.json", "results.md"
    ]  # fmt: skip
    assert all(f"===== stage {name}" in (results / "log.txt").read_text() for name in STAGES)


@pytest.mark.slow
def test_cpu_smoke_rows_hold_real_measurements(smoke: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, results = smoke
    stages = {s["name"]: s for s in json.loads((results / "results.json").read_text())["stages"]}
    checks = {(r["what"], r["precision"]): r for r in stages["correctness"]["rows"] if r.get("rel") is not None}
    assert checks["chain", "fp32"]["rel"] == 0.0  # CPU against itself
    assert 1e-4 < checks["chain", "bf16"]["rel"] < 3e-2  # a cast network differs, within its stated bound
    assert 1e-5 < checks["chain", "fp16"]["rel"] < checks["chain", "bf16"]["rel"]
    assert {r["batch"] for r in stages["correctness"]["rows"] if r["what"] == "cuda-graphs"} == {1, 2}
    timed = [r for r in stages["throughput"]["rows"] if "images_per_s" in r]
    assert {(r["variant"], r["batch"]) for r in timed} == {(v, b) for v in ("eager fp32", "eager bf16") for b in (1, 2)}
    for row in timed:
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["device_ms"] * 1e3)
        assert row["x_floor"] == pytest.approx(row["device_ms"] / row["floor_ms"])
    assert all("not run" in r["note"] for r in stages["compile"]["rows"])
    serve = {r["run"].split()[0]: r for r in stages["serve"]["rows"]}
    assert serve["sequential"]["requests"] == 3 and serve["sequential"]["p50_ms"] > 0
    assert serve["sequential"]["server_over_raw"] == pytest.approx(
        serve["sequential"]["images_per_s"] / serve["raw"]["images_per_s"]
    )
    assert {r["outcome"] for r in stages["tests"]["rows"]} == {"skipped"}  # no CUDA here
    # the quality stage's archive is one `ddgan eval --samples` set: the DDPM's seeds 0..3 at the plan's 5 steps
    archive = read_sample_folders([str(results / "quality-mnist-ddpm.npz")])
    assert archive.seeds == [0, 1, 2, 3] and archive.images.shape == (4, 1, 32, 32)
    assert archive.identity is not None and (archive.identity["sampler"], archive.identity["steps"]) == ("ddpm", 5)
    assert archive.models == ["models/mnist-ddpm"]
    assert [r["seeds"] for r in stages["quality"]["rows"]] == [[0, 1], [2, 3]]
    markdown = (results / "results.md").read_text()
    assert "## serve: passed" in markdown and "| mnist | chain | bf16 | 2 |" in markdown


def _fake_stage(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failing_stage_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    def command_for(name: str, stage_file: Path, deadline: float) -> list[str]:
        if name == "env":
            return _fake_stage("import sys; print('env broke: no module named fastapi'); sys.exit(2)")
        rows = json.dumps({"rows": [{"item": name}], "notes": [], "summary": f"{name} ok"})
        return _fake_stage(f"open({str(stage_file)!r}, 'w').write({rows!r})")

    results = validate.run_stages(SMOKE_PLAN, ["env", "tests"], tmp_path, command_for, 60, "cmd")
    env, tests = results["stages"]
    assert (env["status"], env["error"]) == ("error", "env broke: no module named fastapi")
    assert (tests["status"], tests["rows"], tests["summary"]) == ("passed", [{"item": "tests"}], "tests ok")
    assert results["passed"] is False
    assert json.loads((tmp_path / "results.json").read_text())["stages"][1]["status"] == "passed"


def test_a_hung_stage_is_killed_with_its_children_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "GRACE_S", 0.5)
    monkeypatch.setattr(validate, "MIN_STAGE_S", 0.5)
    plan = dataclasses.replace(SMOKE_PLAN, budgets={"serve": 1.0})
    pid_file = tmp_path / "child.pid"

    def command_for(name: str, stage_file: Path, deadline: float) -> list[str]:
        rows = json.dumps({"rows": [{"run": "before the hang"}], "notes": [], "summary": ""})
        return _fake_stage(
            "import subprocess, sys, time\n"
            f"open({str(stage_file)!r}, 'w').write({rows!r})\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)\n"
        )

    started = time.monotonic()
    results = validate.run_stages(plan, ["serve"], tmp_path, command_for, 60, "cmd")
    assert time.monotonic() - started < 30
    (stage,) = results["stages"]
    assert stage["status"] == "timed out" and stage["rows"] == [{"run": "before the hang"}]
    assert stage["error"].startswith("killed after")
    status = Path(f"/proc/{pid_file.read_text()}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # the stage's child is gone too


def test_stages_past_the_run_budget_are_skipped(tmp_path: Path) -> None:
    results = validate.run_stages(SMOKE_PLAN, ["env", "tests"], tmp_path, lambda *a: ["false"], 0, "cmd")
    assert [s["status"] for s in results["stages"]] == ["skipped", "skipped"] and results["passed"] is False
    assert "| env | skipped |" in (tmp_path / "results.md").read_text()


def test_gpu_tests_are_found_by_their_marker_and_read_from_junit(tmp_path: Path) -> None:
    files = {p.relative_to(REPO).as_posix() for p in gpu_test_files(REPO / "tests")}
    assert {"tests/export/test_gpu_backends.py", "tests/training/test_trainer.py"} <= files
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite><testcase classname="t.a" name="ok"/>'
        '<testcase classname="t.a" name="bad"><failure message="assert 1 == 2">trace</failure></testcase>'
        '<testcase classname="t.b" name="gpu"><skipped message="needs a CUDA GPU"/></testcase></testsuite></testsuites>'
    )
    assert junit_rows(report) == [
        {"test": "t.a::ok", "outcome": "passed", "message": ""},
        {"test": "t.a::bad", "outcome": "failed", "message": "assert 1 == 2"},
        {"test": "t.b::gpu", "outcome": "skipped", "message": "needs a CUDA GPU"},
    ]


def test_wheel_pins_download_command_and_folder_check(tmp_path: Path) -> None:
    pins = read_pins(REPO / "bench" / "gpu" / "wheels.txt")
    assert {"fastapi", "starlette", "uvicorn", "pydantic", "pydantic-core", "pydantic-settings", "diffusers"} <= set(
        pins
    )
    assert "torch" not in pins and "numpy" not in pins  # the host's own builds are never replaced
    command = download_command({"fastapi": "0.1.0"}, tmp_path, "3.12")
    assert command[1:4] == ["-m", "pip", "download"] and command[-1] == "fastapi==0.1.0"
    assert {"--no-deps", "--only-binary=:all:", "manylinux2014_x86_64"} <= set(command)
    assert command[command.index("--python-version") + 1] == "3.12"
    (tmp_path / "fastapi-0.1.0-py3-none-any.whl").touch()
    (tmp_path / "pydantic_core-2.0-cp312-cp312-manylinux2014_x86_64.whl").touch()
    assert problems(tmp_path, {"fastapi": "0.1.0", "pydantic-core": "2.0"}) == []
    (tmp_path / "fastapi-0.2.0-py3-none-any.whl").touch()
    assert problems(tmp_path, {"fastapi": "0.1.0", "pydantic-core": "2.0", "uvicorn": "1.0"}) == [
        f"uvicorn==1.0: no wheel in {tmp_path}",
        f"fastapi: wheels ['0.1.0', '0.2.0'] in {tmp_path}, pinned 0.1.0",
    ]


def test_bad_pin_lines_are_refused(tmp_path: Path) -> None:
    pins = tmp_path / "wheels.txt"
    pins.write_text("# comment\nfastapi==0.1.0  # why\nuvicorn>=0.2\n")
    with pytest.raises(SystemExit, match=r"wheels.txt:3: expected name==version, got 'uvicorn>=0.2'"):
        read_pins(pins)
