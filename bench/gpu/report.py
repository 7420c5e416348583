"""The GPU validation run's markdown: one table per stage from the rows it recorded, and the short final table."""

from __future__ import annotations

from typing import Any

# stage -> (row key, column header, format) in table order; a missing value prints as "—".
COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "env": (("item", "item", ""), ("value", "value", ""), ("ok", "ok", "")),
    "tests": (("test", "test", ""), ("outcome", "outcome", ""), ("message", "message", "")),
    "correctness": (
        ("preset", "preset", ""),
        ("what", "what", ""),
        ("precision", "precision", ""),
        ("batch", "batch", "d"),
        ("rel", "‖out−ref‖/‖ref‖", ".1e"),
        ("max_abs", "max abs", ".1e"),
        ("bound", "bound", ".0e"),
        ("passed", "passed", ""),
        ("note", "note", ""),
    ),
    "throughput": (
        ("preset", "preset", ""),
        ("variant", "variant", ""),
        ("batch", "batch", "d"),
        ("device_ms", "device ms", ".2f"),
        ("images_per_s", "images/s", ".1f"),
        ("e2e_ms", "e2e ms", ".2f"),
        ("e2e_images_per_s", "e2e images/s", ".1f"),
        ("floor_ms", "floor ms", ".2f"),
        ("x_floor", "× floor", ".1f"),
        ("vs_wavediff", "× WaveDiff (A100)", ".2f"),
        ("first_call_s", "first call s", ".1f"),
        ("note", "note", ""),
    ),
    "serve": (
        ("run", "run", ""),
        ("requests", "requests", "d"),
        ("p50_ms", "p50 ms", ".1f"),
        ("p99_ms", "p99 ms", ".1f"),
        ("images_per_s", "images/s", ".1f"),
        ("server_over_raw", "server / raw", ".2f"),
        ("server_inference_ms", "server inference ms", ".1f"),
        ("server_png_ms", "server PNG ms", ".1f"),
        ("server_total_ms", "server total ms", ".1f"),
        ("note", "note", ""),
    ),
}
COLUMNS["compile"] = COLUMNS["throughput"]


def cell(value: Any, spec: str) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if spec and isinstance(value, int | float):
        return format(value, spec)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(columns: tuple[tuple[str, str, str], ...], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if spec else "---" for _, _, spec in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(key), spec) for key, _, spec in columns) + " |")
    return "\n".join(lines)


def stage_table(stages: list[dict[str, Any]]) -> str:
    columns = (
        ("name", "stage", ""),
        ("status", "status", ""),
        ("seconds", "s", ".0f"),
        ("budget_s", "budget s", ".0f"),
        ("summary", "result", ""),
    )
    return table(columns, stages)


def markdown(results: dict[str, Any]) -> str:
    verdict = "all stages passed" if results["passed"] else "NOT all stages passed"
    lines = [
        f"# GPU validation ({results['mode']}): {verdict}",
        "",
        f"Command: `{results['command']}`; started {results['started']}, {results['seconds']:.0f} s of a "
        f"{results['budget_s']:.0f} s budget.",
        "",
        stage_table(results["stages"]),
    ]
    for stage in results["stages"]:
        lines += ["", f"## {stage['name']}: {stage['status']}", ""]
        if stage.get("error"):
            lines += [f"Error: {stage['error']}", ""]
        lines += [f"- {note}" for note in stage.get("notes", [])]
        if stage.get("rows") and stage["name"] in COLUMNS:
            lines += ["", table(COLUMNS[stage["name"]], stage["rows"])]
    return "\n".join(lines) + "\n"
