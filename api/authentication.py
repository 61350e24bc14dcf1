"""Who is calling: an API token or a JWT, checked against PostgreSQL at most once per cache TTL.

The process's listener clears the cache when a token is revoked or a role changes (announced
at commit), so a revoked token is refused from the next request; an expiring token is
checked against its expiry on every request. Misses read the database in the thread pool.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from starlette.concurrency import run_in_threadpool

from api.cache import Cache
from api.errors import Unauthorized
from api.security import InvalidToken, decode_access_token, hash_api_token, is_api_token
from api.settings import ApiSettings
from db.repositories import api_tokens, users
from db.session import session_scope
from db.tables import ApiToken, User

log = logging.getLogger(__name__)

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
        """The account, whichever of its tokens (or JWT) is used: more tokens, no more budget."""
        return f"user:{self.user.id}"


@dataclass
class Entry:
    """A cached caller. The user is a detached row: read, never added to a session."""

    principal: Principal
    token: ApiToken | None = None
    touched_at: float = 0.0  # time.monotonic() of the last `last_used_at` write

    def expired(self) -> bool:
        expires_at = self.token.expires_at if self.token else None
        return expires_at is not None and expires_at.timestamp() <= time.time()


async def authenticate(cache: Cache[Entry], settings: ApiSettings, bearer: str) -> Principal:
    if is_api_token(bearer):
        key = "token:" + hash_api_token(bearer)
        entry = cache.get(key)
        if entry is None or entry.expired():
            generation = cache.generation
            entry = await run_in_threadpool(_find_token, key.removeprefix("token:"))
            if entry is None:
                raise Unauthorized(INVALID)
            cache.put(key, entry, generation)
        elif time.monotonic() - entry.touched_at > TOKEN_TOUCH_INTERVAL.total_seconds():
            entry.touched_at = time.monotonic()
            asyncio.get_running_loop().run_in_executor(None, _touch, entry.token)
        return entry.principal
    try:
        user_id = decode_access_token(bearer, settings)
    except InvalidToken:
        raise Unauthorized(INVALID) from None
    key = "user:" + user_id
    entry = cache.get(key)
    if entry is None:
        generation = cache.generation
        entry = await run_in_threadpool(_find_user, user_id)
        if entry is None:
            raise Unauthorized(INVALID)
        cache.put(key, entry, generation)
    return entry.principal


def _find_token(token_hash: str) -> Entry | None:
    with session_scope() as session:
        found = api_tokens.find_live(session, token_hash=token_hash)
        if found is None:
            return None
        token, user = found
        api_tokens.touch(session, token=token, every=TOKEN_TOUCH_INTERVAL)
    return Entry(Principal(user, token.id), token, time.monotonic())


def _find_user(user_id: str) -> Entry | None:
    with session_scope() as session:
        user = users.get(session, id=user_id)
    return None if user is None else Entry(Principal(user, None))


def _touch(token: ApiToken | None) -> None:
    """Off the request: a lost `last_used_at` write costs nothing but a stale timestamp."""
    try:
        with session_scope() as session:
            if token is not None:
                api_tokens.touch(session, token=token, every=timedelta(0))
    except Exception:
        log.exception("could not record the use of an API token")
