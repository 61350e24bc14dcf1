"""API tokens: issue, list, revoke, and find the live one behind a hash."""

import builtins
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from db.tables import ApiToken, User


def create(
    session: Session,
    *,
    user_id: str,
    name: str,
    token_hash: str,
    prefix: str,
    expires_at: datetime | None,
) -> ApiToken:
    token = ApiToken(
        user_id=user_id, name=name, token_hash=token_hash, prefix=prefix, expires_at=expires_at
    )
    session.add(token)
    session.flush()
    return token


def _live() -> tuple[ColumnElement[bool], ...]:
    return (
        ApiToken.revoked_at.is_(None),
        or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > func.now()),
    )


def list(session: Session, *, user_id: str) -> builtins.list[ApiToken]:
    """The user's tokens that still work, newest first."""
    return builtins.list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user_id, *_live())
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def count(session: Session, *, user_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user_id, *_live())
        )
        or 0
    )


def revoke(session: Session, *, id: str, user_id: str) -> bool:
    """False when the user has no such live token (someone else's does not exist)."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.id == id, ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def find_live(session: Session, *, token_hash: str) -> tuple[ApiToken, User] | None:
    """The unrevoked, unexpired token with this hash and its user, in one query."""
    row = session.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == token_hash, *_live())
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def touch(session: Session, *, token: ApiToken, every: timedelta) -> None:
    """Record use, at most once per `every`: a write per request would cost more than it tells."""
    if token.last_used_at is None or token.last_used_at < datetime.now(UTC) - every:
        session.execute(
            update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=func.now())
        )
