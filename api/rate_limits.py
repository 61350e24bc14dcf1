"""Per-account rate limits shared by every API process, counted in Redis by `limits`.

Two buckets per identity: `write` (creating predictions, and every other POST or DELETE) and
`read` (GET). The defaults are Replicate's: 600 writes and 3000 reads a minute. Sign-up and
sign-in are limited per client address instead (`auth`), to slow password guessing, and
failed sign-ins per account (`signin-failures`), whatever address they come from. If Redis
is unreachable the request is let through: PostgreSQL, not Redis, decides what is accepted.
Counted on the event loop (limits' asyncio storage), not in the thread pool, in one Redis
round trip a request (OneTripStorage).
"""

import asyncio
import logging
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import redis
import redis.asyncio
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from api.errors import TooManyRequests
from api.settings import ApiSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    limit: int
    remaining: int
    reset_at: float  # epoch seconds

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


Window = tuple[int, float, int, float]  # previous count, its TTL, current count, its TTL (s)
# The window a request's last hit left, by limit key: its own task's (a request's) only.
_left: ContextVar[tuple[str, Window] | None] = ContextVar("rate_limit_window", default=None)


class OneTripStorage(RedisStorage):
    """limits' asyncio Redis storage, whose sliding-window hit also reads the window it leaves
    in the same round trip (its two scripts' EVALSHAs in one pipeline), so the
    `get_window_stats` that follows it in the request (for the X-RateLimit-* headers) costs no
    second one. What limits counts and computes is unchanged: only the trips are fewer."""

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        _left.set(None)  # whatever happens below, no earlier hit's window answers for this one
        bridge = self.bridge
        assert isinstance(bridge, RedispyBridge)  # implementation="redispy" below
        keys = [bridge.prefixed_key(self._previous_window_key(key)),
                bridge.prefixed_key(self._current_window_key(key))]  # fmt: skip
        client = cast(redis.asyncio.Redis, bridge.get_connection())
        async with client.pipeline(transaction=False) as pipe:
            pipe.evalsha(bridge.lua_acquire_sliding_window.sha, 2, *keys, limit, expiry, amount)
            pipe.evalsha(bridge.lua_sliding_window.sha, 2, *keys, expiry)
            acquired, window = await pipe.execute(raise_on_error=False)
        if isinstance(acquired, NoScriptError):  # Redis lost its scripts (a restart): not counted
            return await super().acquire_sliding_window_entry(key, limit, expiry, amount)
        if isinstance(acquired, Exception):
            raise acquired
        if not isinstance(window, Exception):  # else get_window_stats asks (and loads it)
            counts = [float(value or 0) for value in window or (0, 0, 0, 0)]
            _left.set((key, (int(counts[0]), max(0, counts[1]) / 1000,
                             int(counts[2]), max(0, counts[3]) / 1000)))  # fmt: skip
        return bool(acquired)

    async def get_sliding_window(self, key: str, expiry: int) -> Window:
        left = _left.get()
        if left is not None and left[0] == key:
            _left.set(None)
            return left[1]
        return await super().get_sliding_window(key, expiry)


@cache
def _limiter(redis_url: str, loop: asyncio.AbstractEventLoop) -> SlidingWindowCounterRateLimiter:
    """One per event loop: an asyncio Redis connection belongs to the loop that opened it."""
    # Short timeouts and no retries: a dead or slow Redis must cost a request milliseconds,
    # not seconds, and a hit Redis ran before its reply timed out must not count twice.
    no_retries: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}  # limits types options narrowly
    storage = OneTripStorage(
        "async+" + redis_url,
        implementation="redispy",
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        **no_retries,
    )
    return SlidingWindowCounterRateLimiter(storage)


@cache
def _item(spec: str) -> RateLimitItem:
    return parse(spec)


def bucket_limit(settings: ApiSettings, bucket: str) -> str:
    return {
        "write": settings.rate_limit_write,
        "read": settings.rate_limit_read,
        "auth": settings.rate_limit_auth,
        "signin-failures": settings.rate_limit_signin_failures,
    }[bucket]


async def hit(settings: ApiSettings, bucket: str, identity: str) -> Usage | None:
    """Count one request; 429 (with Retry-After) once the bucket is spent. None: not counted
    (Redis is down)."""
    item = _item(bucket_limit(settings, bucket))
    limiter = _limiter(settings.redis_url, asyncio.get_running_loop())
    try:
        allowed = await limiter.hit(item, bucket, identity)
        stats = await limiter.get_window_stats(item, bucket, identity)
    except redis.RedisError as exc:
        log.warning("rate limit not checked (Redis unavailable): %s", exc)
        return None
    usage = Usage(item.amount, stats.remaining, stats.reset_time)
    if not allowed:
        raise _spent(item, bucket, usage)
    return usage


async def refuse_if_spent(settings: ApiSettings, bucket: str, identity: str) -> None:
    """429 if the bucket is spent, without counting this request: for buckets that count only
    what failed (`count` them then)."""
    item = _item(bucket_limit(settings, bucket))
    limiter = _limiter(settings.redis_url, asyncio.get_running_loop())
    try:
        if await limiter.test(item, bucket, identity):
            return
        stats = await limiter.get_window_stats(item, bucket, identity)
    except redis.RedisError as exc:
        log.warning("rate limit not checked (Redis unavailable): %s", exc)
        return
    raise _spent(item, bucket, Usage(item.amount, stats.remaining, stats.reset_time))


async def count(settings: ApiSettings, bucket: str, identity: str) -> None:
    item = _item(bucket_limit(settings, bucket))
    limiter = _limiter(settings.redis_url, asyncio.get_running_loop())
    try:
        await limiter.hit(item, bucket, identity)
    except redis.RedisError as exc:
        log.warning("rate limit not counted (Redis unavailable): %s", exc)


def _spent(item: RateLimitItem, bucket: str, usage: Usage) -> TooManyRequests:
    retry_after = max(1, math.ceil(usage.reset_at - time.time()))
    return TooManyRequests(
        f"Rate limit of {item.amount} {bucket} requests per {item.GRANULARITY.name} "
        f"exceeded; retry in {retry_after} s",
        headers={**usage.headers, "Retry-After": str(retry_after)},
    )
