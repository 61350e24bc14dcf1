"""What this worker process is running right now, kept alive and stoppable.

A heartbeat thread renews the lease of every running prediction, so the sweeper can tell a
slow prediction from one whose worker died. A listener thread hears committed status
changes from PostgreSQL (NOTIFY) and flags running predictions that were canceled, so the
model stops them at its next step.
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
from workers.settings import get_worker_settings

log = logging.getLogger(__name__)

_claims: dict[str, tuple[Claim, float]] = {}  # id -> (claim, monotonic run deadline)
_canceled: set[str] = set()
_lock = threading.Lock()


def add(claims: list[Claim], run_timeout_s: float) -> None:
    until = time.monotonic() + run_timeout_s
    with _lock:
        for claim in claims:
            _claims[claim.id] = (claim, until)


def remove(claims: list[Claim]) -> None:
    with _lock:
        for claim in claims:
            _claims.pop(claim.id, None)
            _canceled.discard(claim.id)


def stop_reason(claim: Claim) -> str | None:
    """Why `claim` must stop now, or None: canceled, past its deadline, over the run timeout."""
    with _lock:
        if claim.id in _canceled:
            return "canceled"
        entry = _claims.get(claim.id)
    if claim.deadline is not None and datetime.now(UTC) >= claim.deadline:
        return "The deadline (Cancel-After) passed while it ran"
    if entry is not None and time.monotonic() >= entry[1]:
        return "The model version's run timeout passed while it ran"
    return None


def _heartbeat() -> None:
    settings = get_worker_settings()
    while True:
        time.sleep(settings.lease_s / 3)
        with _lock:
            claims = [claim for claim, _ in _claims.values()]
        if not claims:
            continue
        try:
            with session_scope() as session:
                predictions.renew_leases(session, claims=claims, lease_s=settings.lease_s)
        except Exception:
            log.warning("could not renew leases; retrying", exc_info=True)


def _listen() -> None:
    url = get_database_settings().libpq_url
    while True:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"LISTEN {STATUS_CHANNEL}")
                for notice in conn.notifies():
                    prediction_id, status = notice.payload.split(" ", 1)
                    if status == PredictionStatus.CANCELED:
                        with _lock:
                            if prediction_id in _claims:
                                _canceled.add(prediction_id)
        except Exception:
            log.warning("lost the cancel listener's connection; reconnecting", exc_info=True)
            time.sleep(1)


_started = threading.Event()


def start() -> None:
    """Start the heartbeat and the cancel listener, once per process."""
    with _lock:
        if _started.is_set():
            return
        _started.set()
    for target in (_heartbeat, _listen):
        threading.Thread(target=target, name=target.__name__.strip("_"), daemon=True).start()
