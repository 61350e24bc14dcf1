"""Request dependencies: the one transaction per request, and the authenticated user."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import Unauthorized
from api.security import InvalidToken, decode_access_token
from api.settings import ApiSettings, get_api_settings
from db.repositories import users
from db.session import get_sessionmaker
from db.tables import User


@dataclass
class Transaction:
    """The request's session, and what to do once it has committed (enqueue tasks)."""

    session: Session
    after_commit: list[Callable[[], object]] = field(default_factory=list)


def get_transaction() -> Iterator[Transaction]:
    """Commit here and nowhere else; run the after-commit actions only if the commit held."""
    tx = Transaction(get_sessionmaker()())
    try:
        yield tx
        tx.session.commit()
    except BaseException:
        tx.session.rollback()
        raise
    finally:
        tx.session.close()
    for action in tx.after_commit:
        action()


# scope="function": commit before the response is sent, so a 201 means the row is durable.
TransactionDep = Annotated[Transaction, Depends(get_transaction, scope="function")]
SettingsDep = Annotated[ApiSettings, Depends(get_api_settings)]

_bearer = HTTPBearer(auto_error=False, description="A JWT from POST /v1/auth/token")


def get_current_user(
    tx: TransactionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None:
        raise Unauthorized("Missing credentials: send 'Authorization: Bearer <token>'")
    try:
        user_id = decode_access_token(credentials.credentials, settings)
    except InvalidToken:
        raise Unauthorized("Invalid or expired token") from None
    user = users.get(tx.session, id=user_id)
    if user is None:
        raise Unauthorized("Invalid or expired token")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
