"""`ddgan bench serve --server-cpus/--client-cpus`: the CPU lists and the pinning a spawned server inherits."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from ddgan.bench.serve import cpu_list, pinned

ALLOWED = sorted(os.sched_getaffinity(0))


def test_cpu_lists_use_the_taskset_syntax():
    first = ALLOWED[0]
    assert cpu_list(str(first)) == {first}
    assert cpu_list(",".join(map(str, ALLOWED))) == set(ALLOWED)
    assert cpu_list(f"{ALLOWED[0]}-{ALLOWED[-1]}") >= set(ALLOWED)


@pytest.mark.parametrize("text", ["", "a", "0-x", "1,,2", str(max(ALLOWED) + 1), "-1"])
def test_bad_or_foreign_cpu_lists_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cpu_list(text)


def test_a_child_started_while_pinned_inherits_the_cpus_and_the_parent_gets_its_own_back():
    before = os.sched_getaffinity(0)
    with pinned({ALLOWED[-1]}):
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert child.stdout.strip() == str([ALLOWED[-1]])
    assert os.sched_getaffinity(0) == before
    with pinned(None):
        assert os.sched_getaffinity(0) == before
