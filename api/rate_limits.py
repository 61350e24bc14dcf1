"""Per-account rate limits shared by every API process, counted in Redis by `limits`.

Two buckets per identity: `write` (creating predictions, and every other POST or DELETE) and
`read` (GET). The defaults are Replicate's: 600 writes and 3000 reads a minute. Sign-up and
sign-in are limited per client address instead (`auth`), to slow password guessing, and
failed sign-ins per account (`signin-failures`), whatever address they come from. If Redis
is unreachable the request is let through: PostgreSQL, not Redis, decides what is accepted.
Counted on the event loop (limits' asyncio storage), not in the thread pool.
"""

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from functools import cache

import redis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

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


@cache
def _limiter(redis_url: str, loop: asyncio.AbstractEventLoop) -> SlidingWindowCounterRateLimiter:
    """One per event loop: an asyncio Redis connection belongs to the loop that opened it."""
    # Short timeouts: a dead Redis must cost a request milliseconds, not seconds.
    storage = RedisStorage(
        "async+" + redis_url,
        implementation="redispy",
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
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
