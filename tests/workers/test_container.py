"""The container's limits, read from cgroup files (written here in a temporary tree)."""

import os
from pathlib import Path

import pytest

from workers import container

MACHINE = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


def test_memory_is_the_containers_limit_when_lower(tmp_path: Path) -> None:
    assert container.memory_bytes(cgroup(tmp_path, {"memory.max": "8589934592"})) == min(
        MACHINE, 8589934592
    )
    assert container.memory_bytes(cgroup(tmp_path / "v2max", {"memory.max": "max"})) == MACHINE
    v1 = cgroup(tmp_path / "v1", {"memory/memory.limit_in_bytes": "1073741824"})
    assert container.memory_bytes(v1) == min(MACHINE, 1073741824)
    assert container.memory_bytes(tmp_path / "none") == MACHINE


def test_cpus_are_the_containers_quota_when_lower(tmp_path: Path) -> None:
    machine = os.cpu_count() or 1
    assert container.cpus(cgroup(tmp_path, {"cpu.max": "50000 100000"})) == 1  # half a CPU
    assert container.cpus(cgroup(tmp_path / "unlimited", {"cpu.max": "max 100000"})) == machine
    v1 = cgroup(
        tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}
    )
    assert container.cpus(v1) == 1
    unlimited_v1 = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "1"}
    no_quota = cgroup(tmp_path / "v1u", unlimited_v1)
    assert container.cpus(no_quota) == machine
    assert container.cpus(tmp_path / "none") == machine


def test_openmp_threads_sleep_rather_than_spin_unless_the_operator_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    container.share_cores()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    container.share_cores()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
