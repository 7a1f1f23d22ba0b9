"""How many CPUs this process may use: what thread pools and a private Ray are sized by.

Why not ``os.cpu_count()``: it counts the host's cores. In a CPU-limited pod or container (a Kubernetes
``limits.cpu``, ``docker run --cpus``, ``taskset``) a pool of that many threads only contends for the few CPUs
the process is given. The count here is the smaller of the CPUs the process may run on
(``os.sched_getaffinity``) and its cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), rounded up (a quota of 1.5 CPUs keeps 2 threads busy), at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "affinity_cpus", "cgroup_cpu_limit", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")  # inside a container, its own cgroup (cgroup namespaces)
_V1_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu", ".")  # where distributions mount the v1 cpu controller


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota(quota: str, period: str) -> float | None:
    """CPUs of ``quota / period``; None for no limit ("max", -1) or text that is not a quota."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: str | os.PathLike[str] | None = None) -> float | None:
    """The CPU quota of the cgroup mounted at `root` (default `CGROUP_ROOT`) in CPUs, None when unlimited.

    cgroup v2 writes ``cpu.max`` as ``"max 100000"`` (no limit) or ``"<quota> <period>"``; v1 writes
    ``cpu.cfs_quota_us`` (-1: no limit) and ``cpu.cfs_period_us`` in the cpu controller's folder.
    """
    base = Path(root) if root is not None else CGROUP_ROOT
    v2 = _read(base / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _quota(quota, period)
    for folder in _V1_FOLDERS:
        quota, period = _read(base / folder / "cpu.cfs_quota_us"), _read(base / folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _quota(quota, period)
    return None


def affinity_cpus() -> int:
    """CPUs the scheduler lets this process run on (all the host's where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cpus(cgroup_root: str | os.PathLike[str] | None = None) -> int:
    """CPUs this process may use: the smaller of its affinity and its cgroup quota (rounded up), at least 1."""
    count = affinity_cpus()
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)
