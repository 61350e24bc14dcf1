"""Registering accounts and issuing access tokens."""

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict, Unauthorized
from api.schemas.auth import RegisterRequest, TokenOut
from api.security import create_access_token, hash_password, verify_password
from api.settings import ApiSettings
from db.repositories import users
from db.tables import User


def register(session: Session, body: RegisterRequest) -> User:
    if users.get_by_username(session, username=body.username) is not None:
        raise Conflict(f"Username {body.username!r} is taken")
    try:
        with session.begin_nested():
            return users.create(
                session, username=body.username, password_hash=hash_password(body.password)
            )
    except IntegrityError:  # a concurrent registration won the race
        raise Conflict(f"Username {body.username!r} is taken") from None


def issue_token(session: Session, settings: ApiSettings, username: str, password: str) -> TokenOut:
    # No account's name holds a NUL (PostgreSQL text cannot): no query, the same 401.
    user = None if "\x00" in username else users.get_by_username(session, username=username)
    if not verify_password(password, user.password_hash if user else None) or user is None:
        raise Unauthorized("Incorrect username or password")
    return TokenOut(
        access_token=create_access_token(user.id, settings), expires_in=settings.jwt_ttl_s
    )
