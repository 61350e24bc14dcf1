"""What the worker's container allows, as opposed to what the machine has.

In a container (Docker, Kubernetes) `os.sysconf` and `os.cpu_count()` report the node: a
worker limited to 8 GB on a 256 GB node would budget 128 GB for models, and torch would start a
thread per node core on a 4-CPU quota, all fighting for that quota. The limits are read from the
cgroup files (v2, then v1); without them (no container, or no limit) the machine's figures stand.
"""

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def memory_bytes(root: Path = CGROUP) -> int:
    """The machine's memory, or the container's memory limit if it is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        limit = _read(root / name)
        if limit is not None and limit.isdigit():
            return min(total, int(limit))
    return total


def cpus(root: Path = CGROUP) -> int:
    """The machine's CPUs, or the container's CPU quota if it is lower (rounded up)."""
    count = os.cpu_count() or 1
    quota = _quota(root)
    return max(1, min(count, math.ceil(quota))) if quota else count


def _quota(root: Path) -> float | None:
    """CPUs' worth of the container's quota: cgroup v2 `cpu.max` ("max 100000" or "400000
    100000"), else v1's cfs_quota_us / cfs_period_us; None when unlimited."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return int(quota) / int(period) if quota.isdigit() and period.isdigit() else None
    quota_v1 = _read(root / "cpu/cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu/cpu.cfs_period_us")
    if quota_v1 and period_v1 and quota_v1.isdigit() and period_v1.isdigit():
        return int(quota_v1) / int(period_v1)
    return None  # "-1" (v1, unlimited) or no cgroup files


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def share_cores() -> None:
    """OpenMP threads that sleep while they wait for work instead of spinning, unless
    OMP_WAIT_POLICY already chose. torch's CPU threads busy-wait between parallel regions by
    default: on cores shared with the worker's own threads (Celery, the recorder), PostgreSQL,
    Redis and the API, the spinning took the CPU they needed (bench/RESULTS.md). libgomp reads
    the variable when it loads: call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fit_torch_threads() -> None:
    """torch's CPU threads to the container's CPUs, unless OMP_NUM_THREADS already chose.
    Called before a model loads in the process that runs it."""
    allowed = cpus()
    if "OMP_NUM_THREADS" not in os.environ and allowed < (os.cpu_count() or 1):
        import torch

        torch.set_num_threads(allowed)
