"""Idempotency keys: which prediction a (user, key) produced in the last 24 hours."""

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.tables import IdempotencyKey

TTL = "24 hours"


def try_lock(session: Session, *, owner_id: str, key: str) -> bool:
    """Take the key for this transaction; False while another request holds it."""
    return bool(
        session.scalar(
            select(func.pg_try_advisory_xact_lock(func.hashtextextended(owner_id + ":" + key, 0)))
        )
    )


def get(session: Session, *, owner_id: str, key: str) -> IdempotencyKey | None:
    """The key's record if it was used in the last 24 hours."""
    return session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.owner_id == owner_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at > func.now() - text(f"interval '{TTL}'"),
        )
    ).one_or_none()


def put(
    session: Session, *, owner_id: str, key: str, request_hash: str, prediction_id: str
) -> None:
    """Remember the key (replacing an expired record of it)."""
    values = {"request_hash": request_hash, "prediction_id": prediction_id}
    session.execute(
        insert(IdempotencyKey)
        .values(owner_id=owner_id, key=key, **values)
        .on_conflict_do_update(
            index_elements=["owner_id", "key"], set_={**values, "created_at": func.now()}
        )
    )


def delete_expired(session: Session) -> int:
    result = session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.created_at < func.now() - text(f"interval '{TTL}'")
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
