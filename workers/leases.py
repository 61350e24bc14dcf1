"""What this worker process holds right now, kept alive and stoppable.

A heartbeat renews the lease of every running prediction, so the sweeper can tell a slow
prediction from one whose worker died, and leases the queued ones this process has received
but not started yet (they wait for a batch), so that those too run elsewhere if it dies. A
running prediction whose lease could not be renewed was taken over by another attempt (this
process was paused, or cut off, past its lease): it is flagged lost, so the model stops it and
nothing more of it is sent. A listener hears committed terminal statuses from
PostgreSQL (NOTIFY) and flags running predictions that were canceled, so the model stops them
at its next step. The worker runtime (workers/runtime.py) runs both on their own threads.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

from db.listener import Listener
from db.repositories import predictions
from db.repositories.predictions import STATUS_CHANNEL, Claim
from db.session import session_scope
from db.tables import PredictionStatus

log = logging.getLogger(__name__)

CANCELED = "canceled"
LOST = "lost"  # another attempt owns the prediction now


class Leases:
    """The predictions this process holds: received ones, and the claims it runs with their
    run deadlines and cancel and lost flags."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()  # received, not finished (a duplicate counts twice)
        self._claims: dict[str, tuple[Claim, float]] = {}  # id -> (claim, monotonic run deadline)
        self._canceled: set[str] = set()
        self._lost: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, ids: Iterable[str]) -> None:
        """A message's predictions, from its arrival until its task ends."""
        with self._lock:
            self._held.update(ids)

    def release(self, ids: Iterable[str]) -> None:
        with self._lock:
            for id in ids:
                left = self._held[id] - 1
                if left > 0:
                    self._held[id] = left
                else:
                    del self._held[id]

    def add(self, claims: list[Claim], run_timeout_s: float) -> None:
        until = time.monotonic() + run_timeout_s
        with self._lock:
            for claim in claims:
                self._claims[claim.id] = (claim, until)

    def remove(self, claims: list[Claim]) -> None:
        with self._lock:
            for claim in claims:
                self._claims.pop(claim.id, None)
                self._canceled.discard(claim.id)
                self._lost.discard(claim.id)

    def stop_reason(self, claim: Claim) -> str | None:
        """Why `claim` must stop now, or None: canceled, taken over by another attempt (lost),
        past its deadline, over the run timeout."""
        with self._lock:
            if claim.id in self._canceled:
                return CANCELED
            if claim.id in self._lost:
                return LOST
            entry = self._claims.get(claim.id)
        if claim.deadline is not None and datetime.now(UTC) >= claim.deadline:
            return "The deadline (Cancel-After) passed while it ran"
        if entry is not None and time.monotonic() >= entry[1]:
            return "The model version's run timeout passed while it ran"
        return None

    def heartbeat(self, lease_s: float, stopping: threading.Event) -> None:
        """Every third of a lease until `stopping` is set: renew the leases of running
        predictions (flagging those taken over) and lease the received ones."""
        while not stopping.wait(lease_s / 3):
            with self._lock:
                claims = [claim for claim, _ in self._claims.values()]
                held = list(self._held)
            if not claims and not held:
                continue
            try:
                with session_scope() as session:
                    owned = predictions.renew_leases(session, claims=claims, lease_s=lease_s)
                    if held:
                        predictions.lease_held(session, ids=held, lease_s=lease_s)
            except Exception:
                log.warning("could not renew leases; retrying", exc_info=True)
                continue
            self._flag_lost([claim for claim in claims if claim.id not in owned])

    def _flag_lost(self, claims: list[Claim]) -> None:
        with self._lock:
            lost = [c for c in claims if self._claims.get(c.id, (None,))[0] == c]
            self._lost.update(claim.id for claim in lost)
        for claim in lost:
            log.warning(
                "prediction %s: attempt %d no longer owns it (another attempt took over); "
                "stopping it",
                claim.id, claim.attempts, extra={"prediction_id": claim.id},
            )  # fmt: skip

    def listen(self, stopping: threading.Event) -> None:
        """Flag running predictions that were canceled, until `stopping` is set. A cancel
        announced while the connection was down goes unheard, so every (re)connect reads the
        running ones' statuses once (`_catch_up`)."""
        listener = Listener("cancel listener", [STATUS_CHANNEL], on_connect=self._catch_up)
        listener.run(stopping, handle=lambda notice: self._heard(notice.payload), timeout_s=1.0)

    def _catch_up(self) -> None:
        """Flag the running predictions canceled while nothing listened. (Should this read
        fail, the listener connects again and this runs again.)"""
        with self._lock:
            ids = list(self._claims)
        if not ids:
            return
        with session_scope() as session:
            canceled = predictions.canceled_among(session, ids=ids)
        with self._lock:
            self._canceled.update(id for id in canceled if id in self._claims)

    def _heard(self, payload: str) -> None:
        prediction_id, status = payload.split(" ", 1)
        if status == PredictionStatus.CANCELED:
            with self._lock:
                if prediction_id in self._claims:
                    self._canceled.add(prediction_id)
