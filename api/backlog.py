"""Backpressure without counting on every create.

The create statement counts the version's queued predictions and the caller's unfinished ones,
each up to its limit (db/repositories/predictions_async.py). With a deep backlog that is
thousands of index entries a create, far more work than the insert itself. A count only has to
show that a limit is not reached, and a recent count far below the limit shows it too: in `age`
seconds no more than MAX_CREATES_PER_S predictions can have been added, by every API process
together, so while `count + MAX_CREATES_PER_S * age < limit` the count is skipped (scanned up
to 0 rows) and the statement is a plain insert. Near a limit every create counts, as before.
"""

import time
from dataclasses import dataclass

from db.repositories.predictions import Backlog

# Far above what one deployment accepts (a few thousand creates a second at most).
MAX_CREATES_PER_S = 5000.0
MAX_KEYS = 10_000  # counts kept per process (versions and callers); the oldest go first


class Headroom:
    """The last count per key (a version's queue, a caller's predictions in flight), and
    whether the next create must count again. Used on the event loop only: no lock."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, monotonic when)

    def scan_limit(self, key: str, limit: int) -> int:
        """How far the create statement must count for `key`: `limit`, or 0 (no scan) while
        the last count leaves room for every create since."""
        last = self._counts.get(key)
        if last is None:
            return limit
        count, at = last
        return limit if count + MAX_CREATES_PER_S * (time.monotonic() - at) >= limit else 0

    def counted(self, key: str, count: int) -> None:
        self._counts.pop(key, None)  # re-inserted last: the dict stays oldest first
        self._counts[key] = (count, time.monotonic())
        if len(self._counts) > MAX_KEYS:
            del self._counts[next(iter(self._counts))]


@dataclass(frozen=True)
class Scans:
    """How far one create statement counts a version's queue and a caller's work in flight."""

    version_id: str
    owner_id: str
    version: int
    owner: int

    def counted(self, backlog: Backlog) -> None:
        """Remember the counts the statement made (a skipped count reads 0: not kept)."""
        if self.version:
            headroom.counted(f"queued:{self.version_id}", backlog.queued_for_version)
        if self.owner:
            headroom.counted(f"in-flight:{self.owner_id}", backlog.unfinished_for_owner)


def scans(version_id: str, owner_id: str, version_limit: int, owner_limit: int) -> Scans:
    return Scans(
        version_id,
        owner_id,
        headroom.scan_limit(f"queued:{version_id}", version_limit),
        headroom.scan_limit(f"in-flight:{owner_id}", owner_limit),
    )


headroom = Headroom()
