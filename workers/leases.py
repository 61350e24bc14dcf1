"""What this worker process is running right now, kept alive and stoppable.

A heartbeat renews the lease of every running prediction, so the sweeper can tell a slow
prediction from one whose worker died. A listener hears committed status changes from
PostgreSQL (NOTIFY) and flags running predictions that were canceled, so the model stops them
at its next step. The worker runtime (workers/runtime.py) runs both on their own threads.
"""

import logging
import threading
import time
from datetime import UTC, datetime

import psycopg

from db.repositories import predictions
from db.repositories.predictions import STATUS_CHANNEL, Claim
from db.session import session_scope
from db.settings import get_database_settings
from db.tables import PredictionStatus

log = logging.getLogger(__name__)


class Leases:
    """The predictions this process runs: their claims, run deadlines and cancel flags."""

    def __init__(self) -> None:
        self._claims: dict[str, tuple[Claim, float]] = {}  # id -> (claim, monotonic run deadline)
        self._canceled: set[str] = set()
        self._lock = threading.Lock()

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

    def stop_reason(self, claim: Claim) -> str | None:
        """Why `claim` must stop now, or None: canceled, past its deadline, over the run timeout."""
        with self._lock:
            if claim.id in self._canceled:
                return "canceled"
            entry = self._claims.get(claim.id)
        if claim.deadline is not None and datetime.now(UTC) >= claim.deadline:
            return "The deadline (Cancel-After) passed while it ran"
        if entry is not None and time.monotonic() >= entry[1]:
            return "The model version's run timeout passed while it ran"
        return None

    def heartbeat(self, lease_s: float, stopping: threading.Event) -> None:
        """Renew every running prediction's lease each third of it, until `stopping` is set."""
        while not stopping.wait(lease_s / 3):
            with self._lock:
                claims = [claim for claim, _ in self._claims.values()]
            if not claims:
                continue
            try:
                with session_scope() as session:
                    predictions.renew_leases(session, claims=claims, lease_s=lease_s)
            except Exception:
                log.warning("could not renew leases; retrying", exc_info=True)

    def listen(self, stopping: threading.Event) -> None:
        """Flag running predictions that were canceled, until `stopping` is set."""
        url = get_database_settings().libpq_url
        while not stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {STATUS_CHANNEL}")
                    while not stopping.is_set():
                        # A notice that comes between two calls waits for the next one.
                        for notice in conn.notifies(timeout=1.0):
                            self._heard(notice.payload)
            except Exception:
                log.warning("lost the cancel listener's connection; reconnecting", exc_info=True)
                stopping.wait(1)

    def _heard(self, payload: str) -> None:
        prediction_id, status = payload.split(" ", 1)
        if status == PredictionStatus.CANCELED:
            with self._lock:
                if prediction_id in self._claims:
                    self._canceled.add(prediction_id)
