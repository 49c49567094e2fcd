"""The machine a figure was measured on: CPU model, CPUs this process may use, platform."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_threads", "machine_info"]


def cpu_threads() -> int:
    """CPUs this process may use: the cgroup quota (containers) or the affinity mask, at least 1."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            available = min(available, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, available)


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), architecture, CPU count, `threads` used and platform, for a benchmark."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "system": platform.platform(),
    }
