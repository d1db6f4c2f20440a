"""How many CPUs this process may really use, read without torch (the command line asks
before it loads torch).

``os.cpu_count()`` counts the machine's cores; a process may be pinned to fewer
(``sched_getaffinity``) and, in a container or a systemd slice, allowed less CPU time than
its cores would give (a cgroup quota: ``cpu.max`` ``"200000 100000"`` is two CPUs). More
torch threads than that spend their time waiting for each other: on a busy 2-core machine
the demo trained at 10-13 images/s with torch's default threads against 310-386 with one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
OWN_CGROUP = Path("/proc/self/cgroup")


def available_cores(root: Path = CGROUP, own: Path = OWN_CGROUP) -> int:
    """The cores this process may use: its CPU affinity, lowered to the cgroup quota; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, own)
    if quota is not None:
        cores = min(cores, math.floor(quota))  # 1.5 CPUs of quota keep 2 threads throttled half the time
    return max(1, cores)


def default_threads(load: float | None = None) -> int:
    """Torch threads for training when none are asked for: ``OMP_NUM_THREADS`` when the user
    set it (their word for this machine), else the usable cores less those other jobs keep
    busy (the one-minute load average, ``load``; read now when None). A thread on a core
    another job holds makes every step wait for it, where one thread fewer costs little."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    if text.isdigit() and int(text) >= 1:
        return int(text)
    busy = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    return max(1, available_cores() - math.floor(busy + 0.5))


def cgroup_cpu_limit(root: Path = CGROUP, own: Path = OWN_CGROUP) -> float | None:
    """The CPUs the cgroup quota grants this process (2.0 for ``200000 100000``), None when
    there is no quota. The tightest quota of the process's cgroup and its parents counts."""
    limits = [limit for folder in _cgroup_folders(root, own) if (limit := _folder_limit(folder)) is not None]
    return min(limits, default=None)


def _cgroup_folders(root: Path, own: Path) -> list[Path]:
    """The cgroup folders whose quotas apply: v2's own cgroup and its parents up to ``root``,
    v1's cpu controller. In a container both are usually ``root`` itself."""
    folders = [root, root / "cpu", root / "cpu,cpuacct"]
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return folders
    for line in lines:
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0" and path.strip("/"):  # cgroup v2: "0::/user.slice/..."
            parts = Path(path.strip("/")).parts
            folders += [root.joinpath(*parts[:n]) for n in range(1, len(parts) + 1)]
    return folders


def _folder_limit(folder: Path) -> float | None:
    v2 = folder / "cpu.max"  # "max 100000" (no quota) or "200000 100000"
    if v2.is_file():
        fields = _read(v2).split()
        return parse_quota(fields[0], fields[1]) if len(fields) == 2 else None
    quota, period = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"  # v1: -1 is no quota
    if quota.is_file() and period.is_file():
        return parse_quota(_read(quota), _read(period))
    return None


def parse_quota(quota: str, period: str) -> float | None:
    """CPUs granted by a quota and period in microseconds; None for no quota (``max``, ``-1``)."""
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max"
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:  # unreadable: as if there were no quota
        return ""
