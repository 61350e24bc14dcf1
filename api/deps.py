"""Request dependencies: the one transaction per request, the authenticated caller (JWT or API
token) and their rate limit, and the admin check."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api import rate_limits
from api.errors import Forbidden, Unauthorized
from api.security import InvalidToken, decode_access_token, hash_api_token, is_api_token
from api.settings import ApiSettings, get_api_settings
from db.repositories import api_tokens, users
from db.session import get_sessionmaker, session_scope
from db.tables import Role, User


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

_bearer = HTTPBearer(
    auto_error=False, description="A JWT from POST /v1/auth/token, or an API token (qrn_...)"
)
# How stale `last_used_at` may get before a request writes it again.
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)
INVALID = "Invalid, expired or revoked token"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and the identity their rate limits are counted under."""

    user: User
    api_token_id: str | None

    @property
    def rate_limit_key(self) -> str:
        return f"token:{self.api_token_id}" if self.api_token_id else f"user:{self.user.id}"


def authenticate(session: Session, settings: ApiSettings, bearer: str) -> Principal:
    if is_api_token(bearer):
        found = api_tokens.find_live(session, token_hash=hash_api_token(bearer))
        if found is None:
            raise Unauthorized(INVALID)
        token, user = found
        api_tokens.touch(session, token=token, every=TOKEN_TOUCH_INTERVAL)
        return Principal(user, token.id)
    try:
        user_id = decode_access_token(bearer, settings)
    except InvalidToken:
        raise Unauthorized(INVALID) from None
    account = users.get(session, id=user_id)
    if account is None:
        raise Unauthorized(INVALID)
    return Principal(account, None)


def get_principal(
    request: Request,
    response: Response,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Authenticate, then count the request against the caller's rate limit.

    In a short transaction of its own, not the request's: FastAPI runs each sync dependency
    and the endpoint in separate thread-pool calls, and a connection held between them waits
    for a free thread while the threads wait for a free connection (a deadlock under load).
    """
    if credentials is None:
        raise Unauthorized("Missing credentials: send 'Authorization: Bearer <token>'")
    with session_scope() as session:
        principal = authenticate(session, settings, credentials.credentials)
    bucket = "read" if request.method in ("GET", "HEAD") else "write"
    usage = rate_limits.hit(settings, bucket, principal.rate_limit_key)
    if usage is not None:
        response.headers.update(usage.headers)
    return principal


# async: no I/O, so no trip through the thread pool on every request.
async def get_current_user(principal: Annotated[Principal, Depends(get_principal)]) -> User:
    return principal.user


async def get_admin(user: Annotated[User, Depends(get_current_user)]) -> User:
    if user.role != Role.ADMIN:
        raise Forbidden("Only administrators may do this")
    return user


def owner_scope(user: User) -> str | None:
    """Whose objects the user may see: their own, or everyone's for an admin."""
    return None if user.role == Role.ADMIN else user.id


def limit_auth_attempts(request: Request, settings: SettingsDep) -> None:
    """Sign-up and sign-in, per client address: slows password guessing."""
    client = request.client.host if request.client else "unknown"
    rate_limits.hit(settings, "auth", f"ip:{client}")


CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(get_admin)]
AuthAttempt = Depends(limit_auth_attempts)
