"""How many CPUs this process may use, for sizing thread pools (torch, onnxruntime, workers)."""

from __future__ import annotations

import os
from pathlib import Path


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    CPU limit), which os.cpu_count() does not see."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(int(quota) / int(period))))
