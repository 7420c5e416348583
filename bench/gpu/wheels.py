"""`python -m ddgan.bench.gpu.wheels`: download the wheels a device run carries (bench/gpu/wheels.txt) into .whl/.

Run it on a machine that reaches the package registry; the GPU host reaches nothing. pip fetches exactly the
pinned versions as CPython 3.12 manylinux x86-64 wheels without their dependencies (wheels.txt names every one
the host lacks). Wheels in the folder that are not pinned are removed first: two versions of one package stop
the whole install there. Then it checks that every pin has its wheel and that the wheels plus the working tree
that travels with a run (tracked and untracked-not-ignored files) fit in the 64 MiB a run carries.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from ddgan.bench.gpu.common import REPO

LIMIT_MIB = 64
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines; anything else (but comments) is an error."""
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if match is None:
            raise SystemExit(f"{path}:{number}: expected name==version, got {line!r}")
        pins[normalize(match[1])] = match[2]
    return pins


def wheel_key(path: Path) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def download_command(pins: dict[str, str], dest: Path, python_version: str) -> list[str]:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        *(f"{name}=={version}" for name, version in pins.items()),
    ]


def problems(dest: Path, pins: dict[str, str]) -> list[str]:
    found: dict[str, list[str]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel_key(wheel)
        found.setdefault(name, []).append(version)
    issues = [f"{name}=={version}: no wheel in {dest}" for name, version in pins.items() if name not in found]
    for name, versions in found.items():
        if versions != [pins.get(name)]:
            issues.append(f"{name}: wheels {versions} in {dest}, pinned {pins.get(name, 'nothing')}")
    return issues


def travelling_bytes(repo: Path) -> int | None:
    """Bytes of the files a device run sends (tracked and untracked-not-ignored), or None outside a git checkout."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = (repo / name for name in listing.decode().split("\0") if name)
    return sum(path.lstat().st_size for path in paths if path.is_symlink() or path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddgan.bench.gpu.wheels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dest", type=Path, default=REPO / ".whl", help="wheel folder (default .whl/, git-ignored)")
    parser.add_argument("--requirements", type=Path, default=Path(__file__).with_name("wheels.txt"))
    parser.add_argument("--python-version", default="3.12", help="the GPU host's Python (default 3.12)")
    parser.add_argument("--check-only", action="store_true", help="check the folder, download nothing")
    args = parser.parse_args(argv)
    pins = read_pins(args.requirements)
    args.dest.mkdir(parents=True, exist_ok=True)
    for wheel in args.dest.glob("*.whl"):
        name, version = wheel_key(wheel)
        if pins.get(name) != version and not args.check_only:
            print(f"removing {wheel.name}: not pinned in {args.requirements.name}")
            wheel.unlink()
    if not args.check_only:
        subprocess.run(download_command(pins, args.dest, args.python_version), check=True)
    issues = problems(args.dest, pins)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(wheel.stat().st_size for wheel in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    tree = travelling_bytes(REPO)
    print(f"{total / 2**20:8.2f} MiB  in {len(wheels)} wheels ({args.dest})")
    if tree is None:
        print("working tree size unknown (not a git checkout)")
    else:
        print(
            f"{tree / 2**20:8.2f} MiB  working tree that travels; with the wheels {(tree + total) / 2**20:.1f} "
            f"of {LIMIT_MIB} MiB"
        )
        if tree + total > LIMIT_MIB * 2**20:
            issues.append(f"wheels plus working tree exceed the {LIMIT_MIB} MiB a device run carries")
    for issue in issues:
        print(f"problem: {issue}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
