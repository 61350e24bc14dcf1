"""The backlog headroom: a create counts again only when the last count could be stale enough
to matter."""

import pytest

from api import backlog
from api.backlog import MAX_CREATES_PER_S, Headroom


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(backlog.time, "monotonic", lambda: now[0])
    return now


def test_a_key_never_counted_is_counted(clock: list[float]) -> None:
    assert Headroom().scan_limit("v", 1000) == 1000


def test_a_count_far_below_the_limit_spares_the_next_creates_until_it_could_be_stale(
    clock: list[float],
) -> None:
    headroom = Headroom()
    headroom.counted("v", 500)
    assert headroom.scan_limit("v", 1000) == 0
    clock[0] += 499 / MAX_CREATES_PER_S  # 499 more could have been created: still room
    assert headroom.scan_limit("v", 1000) == 0
    clock[0] += 1 / MAX_CREATES_PER_S
    assert headroom.scan_limit("v", 1000) == 1000


def test_near_the_limit_every_create_counts(clock: list[float]) -> None:
    headroom = Headroom()
    headroom.counted("v", 999)
    clock[0] += 1 / MAX_CREATES_PER_S
    assert headroom.scan_limit("v", 1000) == 1000


def test_it_keeps_a_bounded_number_of_counts(clock: list[float]) -> None:
    headroom = Headroom()
    for n in range(backlog.MAX_KEYS + 5):
        headroom.counted(f"user-{n}", 0)
    assert headroom.scan_limit("user-0", 10) == 10  # the oldest went first
    assert headroom.scan_limit(f"user-{backlog.MAX_KEYS + 4}", 10) == 0
