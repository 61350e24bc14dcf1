"""Request dependencies: the one transaction per request, the authenticated caller (JWT or API
token, api/authentication.py) and their rate limit, the admin check, and the bearer of a signed
URL (db/signed_urls.py) where one may stand in for a token."""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api import rate_limits
from api.authentication import Principal, authenticate
from api.errors import Forbidden, Unauthorized
from api.schemas.base import NeverNull
from api.settings import ApiSettings, get_api_settings
from api.status_listener import StatusListener, status_listener
from db.session import get_sessionmaker
from db.settings import get_database_settings
from db.tables import Role, User


@dataclass
class Transaction:
    """The request's session, and what to do once it has committed (enqueue tasks)."""

    session: Session
    after_commit: list[Callable[[], object]] = field(default_factory=list)


_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


async def database_slot() -> AsyncIterator[None]:
    """One of the pool's connections, reserved on the event loop before any thread is taken.

    A request's transaction takes its connection in one thread-pool call and gives it back in
    another (the commit, after the endpoint). Without this gate, a burst of requests fills
    every thread with calls waiting for a connection while the requests that hold the
    connections wait for a thread to give them back: every request times out (seen with 1,000
    concurrent reads). With at most as many requests past this point as the pool has
    connections, a thread never waits for a connection that only another thread can free."""
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        settings = get_database_settings()
        slots = _slots[loop] = asyncio.Semaphore(settings.pool_size + settings.max_overflow)
    async with slots:
        yield


def get_transaction(_: Annotated[None, Depends(database_slot)]) -> Iterator[Transaction]:
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


async def get_settings() -> ApiSettings:
    """async: a plain function dependency would cost a thread-pool trip per request."""
    return get_api_settings()


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]

_bearer = HTTPBearer(
    auto_error=False, description="A JWT from POST /v1/auth/token, or an API token (qrn_...)"
)


async def get_listener() -> StatusListener:
    """The process's LISTEN connection and the caches it keeps fresh."""
    return status_listener()


ListenerDep = Annotated[StatusListener, Depends(get_listener)]


async def get_principal(
    request: Request,
    response: Response,
    settings: SettingsDep,
    listener: ListenerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Authenticate (from the process's cache when it can), then count the request against
    the caller's rate limit; both on the event loop, no thread hop on a cache hit."""
    try:
        if credentials is None:
            raise Unauthorized("Missing credentials: send 'Authorization: Bearer <token>'")
        principal = await authenticate(listener.principals, settings, credentials.credentials)
    except Unauthorized:
        # Guessing tokens spends the same per-address budget as guessing passwords (429 once
        # it is spent); a valid caller never pays for it.
        await limit_auth_attempts(request, settings)
        raise
    bucket = "read" if request.method in ("GET", "HEAD") else "write"
    usage = await rate_limits.hit(settings, bucket, principal.rate_limit_key)
    if usage is not None:
        response.headers.update(usage.headers)
    return principal


@dataclass(frozen=True)
class SignedUrl:
    """A request with `expires` and `signature` and no Authorization header. Not checked yet:
    the service that reads the resource checks them against it (a file's signature names the
    prediction the file's row belongs to)."""

    expires: str
    signature: str


SIGNED_URL_REFUSED = (
    "This signed URL is invalid, has expired, or is not this resource's: read the prediction "
    "again for fresh URLs, or send 'Authorization: Bearer <token>'"
)


async def get_reader(
    request: Request,
    response: Response,
    settings: SettingsDep,
    listener: ListenerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    expires: Annotated[
        str | None,
        Query(description="Of a signed URL (unix seconds): with `signature`, no token is needed"),
        NeverNull(),
    ] = None,
    signature: Annotated[
        str | None, Query(description="Of a signed URL, as Quern handed it out"), NeverNull()
    ] = None,
) -> User | SignedUrl:
    """A token when one is sent (checked as on every route; the query is then ignored), else a
    signed URL's query, else 401. A signed URL's requests count against its client address's
    read budget (its owner's is not for strangers to spend)."""
    if credentials is not None or (expires is None and signature is None):
        principal = await get_principal(request, response, settings, listener, credentials)
        return principal.user
    client = request.client.host if request.client else "unknown"
    usage = await rate_limits.hit(settings, "read", f"ip:{client}")
    if usage is not None:
        response.headers.update(usage.headers)
    return SignedUrl(expires or "", signature or "")


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


async def limit_auth_attempts(request: Request, settings: SettingsDep) -> None:
    """Sign-up and sign-in, per client address: slows password guessing."""
    client = request.client.host if request.client else "unknown"
    await rate_limits.hit(settings, "auth", f"ip:{client}")


def request_base_url(request: Request) -> str:
    """Where this request reached the API: the root of the URLs in answers."""
    return str(request.base_url).rstrip("/")


async def base_url(request: Request) -> str:
    return request_base_url(request)


BaseUrl = Annotated[str, Depends(base_url)]
CurrentUser = Annotated[User, Depends(get_current_user)]
# The caller's user, or the signed URL that stands in for one (`urls.stream`, file outputs).
Reader = Annotated[User | SignedUrl, Depends(get_reader)]
AdminUser = Annotated[User, Depends(get_admin)]
AuthAttempt = Depends(limit_auth_attempts)
