"""How many CPU threads a process should compute with: the CPUs it may actually use, not the host's count.

torch (OpenMP) and ONNX Runtime size their pools from the host's cores. In a container limited by a cgroup CPU
quota, or a process pinned to a few cores, that is more threads than CPUs: they preempt each other at every
parallel region (OpenMP threads spin-wait for their peers), which on a shared 2-core machine made small models
up to 100x slower. The default here is `OMP_NUM_THREADS` when set, else the affinity mask
(`os.sched_getaffinity`) capped by the cgroup quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us /
cpu.cfs_period_us` in v1), rounded down, at least 1.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs the cgroup quota allows (e.g. 1.5), or None when there is no quota (or no cgroup to read)."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded down), >= 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.floor(limit))
    return max(1, count)


def default_threads() -> int:
    """`OMP_NUM_THREADS` when set (torchrun sets 1 per process), else `available_cpus()`."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cpus()


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, by default `default_threads()`; returns the number set."""
    import torch

    count = threads or default_threads()
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    logger.debug("torch intra-op threads: %d", count)
    return count
