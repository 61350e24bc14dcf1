"""Announcing changes to what the API caches in process (callers, model versions).

NOTIFY is delivered when the transaction commits, and never for one that rolls back; every
API process LISTENs (api/status_listener.py) and drops its cache of that kind.
"""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

CHANNEL = "quern_api_cache"
# What changed: a token or an account (revoked, role changed), or a model's versions.
PRINCIPALS = "principals"
VERSIONS = "versions"


def announce(session: Session, *, what: str) -> None:
    session.execute(select(func.pg_notify(CHANNEL, what)))
