"""Issuing, listing and revoking API tokens."""

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound, Unprocessable
from api.schemas.tokens import ApiTokenCreated, ApiTokenList, ApiTokenOut, TokenCreate
from api.security import hash_api_token, new_api_token
from api.settings import ApiSettings
from db.ids import is_id
from db.repositories import api_tokens, cache_notices
from db.tables import User

# PostgreSQL stores later instants, but one past 9999-12-31 in the session's time zone (as
# 9999-12-31T23:00-05:00 is in UTC) cannot be read back as a Python datetime: every later read
# of the token (listing, signing in with it) would fail.
LATEST_EXPIRY = datetime(9999, 1, 1, tzinfo=UTC)


def create(
    session: Session, user: User, body: TokenCreate, settings: ApiSettings
) -> ApiTokenCreated:
    if body.expires_at is not None and not datetime.now(UTC) < body.expires_at < LATEST_EXPIRY:
        reason = (
            "Must be in the future"
            if body.expires_at <= datetime.now(UTC)
            else "Must be before 9999-01-01"
        )
        raise Unprocessable.field("expires_at", reason)
    if api_tokens.count(session, user_id=user.id) >= settings.max_tokens_per_user:
        raise Conflict(
            f"You have {settings.max_tokens_per_user} API tokens, the most allowed: "
            "revoke one first"
        )
    secret = new_api_token()
    token = api_tokens.create(
        session,
        user_id=user.id,
        name=body.name,
        token_hash=hash_api_token(secret),
        prefix=secret[:8],
        expires_at=body.expires_at,
    )
    return ApiTokenCreated(**ApiTokenOut.model_validate(token).model_dump(), token=secret)


def list_tokens(session: Session, user: User) -> ApiTokenList:
    return ApiTokenList(
        results=[ApiTokenOut.model_validate(t) for t in api_tokens.list(session, user_id=user.id)]
    )


def revoke(session: Session, user: User, token_id: str) -> None:
    """Every API process drops its cached callers when this commits (cache_notices)."""
    if not is_id(token_id) or not api_tokens.revoke(session, id=token_id, user_id=user.id):
        raise NotFound(f"No API token {token_id!r}")
    cache_notices.announce(session, what=cache_notices.PRINCIPALS)
