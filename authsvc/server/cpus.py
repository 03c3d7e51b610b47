"""How many CPUs this process may use: the default of ``authsvc serve --workers``.

The CPU affinity mask (``os.sched_getaffinity``: ``taskset``, cpusets, Kubernetes' static CPU
manager) bounds it, and so does a CFS bandwidth quota (a container's ``--cpus``, a Kubernetes CPU
limit), which the affinity mask does not show: a container limited to 2 CPUs on a 64-core node
sees 64 CPUs in its mask. The quota is read from cgroup v2's ``cpu.max`` of the process's own
cgroup (``/proc/self/cgroup``), or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, and
rounded up (a quota of 1.5 CPUs gives 2). A CPU *request* (Kubernetes ``requests.cpu``, CFS
shares) is a weight, not a bound, and is not read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # absent (no cgroup, another OS), unreadable
        return None


def _quota(quota: str, period: str) -> float | None:
    """CPUs allowed by ``quota`` microseconds per ``period``; None for no limit or nonsense."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """The process's cgroup v2 path and cgroup v1 ``cpu`` controller path, from
    ``/proc/self/cgroup`` (``0::/path`` and ``N:cpu,cpuacct:/path``)."""
    v2 = v1 = None
    for line in (_read(proc_self_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def cgroup_cpu_limit(
    *, cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU bandwidth limit of this process's cgroup in CPUs (e.g. 1.5), or None when there is
    none (``max``) or none can be read. In a container with its own cgroup namespace the process's
    cgroup is the root of the mounted hierarchy; otherwise its path below the mount, checked from
    the process's own cgroup up to the root (a parent's limit bounds its children too)."""
    v2, v1 = _own_cgroups(proc_self_cgroup)
    limits: list[float] = []
    if v2 is not None:
        for directory in _ancestors(cgroup_root, v2):
            fields = (_read(directory / "cpu.max") or "").split()
            if len(fields) == 2 and (cpus := _quota(*fields)) is not None:
                limits.append(cpus)
    if v1 is not None:
        for directory in _ancestors(cgroup_root / "cpu", v1):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None and (cpus := _quota(quota, period)) is not None:
                limits.append(cpus)
    return min(limits) if limits else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each of its parents up to ``mount``, deduplicated, deepest first."""
    parts = [p for p in path.split("/") if p and p != ".."]
    found = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return list(dict.fromkeys(found))


def usable_cpus(
    *,
    affinity: Callable[[], int] = _affinity,
    cgroup_limit: Callable[[], float | None] = cgroup_cpu_limit,
) -> int:
    """The CPUs this process may run on at once: its affinity mask, lowered to its cgroup's CPU
    quota rounded up; at least 1."""
    cpus = max(1, affinity())
    limit = cgroup_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus
