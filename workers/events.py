"""A running prediction's events (output chunks, logs), published to its own Redis Stream.

The API serves a prediction's stream (`events_key` in common/contract.py) as Server-Sent
Events and, once PostgreSQL says the prediction is terminal, drains the stream and ends it; so
every entry of an attempt must be added before its terminal status commits. An entry has three
fields: `event` ("output" or "logs"), `data` (the value as JSON) and `attempt` (the attempt that
made it: the API shows only the entries of one attempt, so a retry, or a worker that lost its
claim, never mixes in).
A stream expires a day after its last entry while its prediction runs, and ten minutes after
the recorder's entries (an attempt's last): by then a client that lost its connection has
reconnected, and a stream opened later gets the stored output from PostgreSQL as one event.
Kept a day, a busy embeddings model's outputs filled Redis (120 a second, 5 KB each: 50 GB),
which the broker shares and cannot evict.

Best effort: PostgreSQL holds the truth, and a prediction never fails for want of Redis. While
Redis is unreachable, entries are dropped with a warning at most once a minute, and after each
failure nothing is tried for a second, so a model streaming tokens does not wait out a timeout
on every step.
"""

import logging
import math
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.contract import events_key

log = logging.getLogger(__name__)

TTL_S = 86400
FINISHED_TTL_S = 600
MAX_LEN = 100_000  # approximate: trimming whole nodes is cheap
TIMEOUT_S = 0.5
PAUSE_AFTER_FAILURE_S = 1.0
WARN_EVERY_S = 60.0

# (prediction id, attempt, "output" or "logs", the value as JSON)
Event = tuple[str, int, str, str]


class EventPublisher:
    """Publishes to the broker's Redis with short timeouts and no retries, since a publisher
    that waits holds up the model. The client connects on first use."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._warned_at = -math.inf

    def publish_many(self, events: list[Event], ttl_s: int = TTL_S) -> bool:
        """Add every event to its prediction's stream, in order, in one round trip, and keep
        the streams `ttl_s` from now. False when they were dropped (Redis unreachable, or it
        was a moment ago)."""
        if time.monotonic() < self._paused_until:
            return False
        if not events:
            return True
        pipe = self._client.pipeline(transaction=False)
        for prediction_id, attempt, event, data in events:
            fields = {"event": event, "data": data, "attempt": attempt}
            pipe.xadd(events_key(prediction_id), fields, maxlen=MAX_LEN, approximate=True)  # type: ignore[arg-type]
        for prediction_id in {prediction_id for prediction_id, *_ in events}:
            pipe.expire(events_key(prediction_id), ttl_s)
        try:
            pipe.execute()
            return True
        except (redis.RedisError, OSError) as exc:
            now = time.monotonic()
            with self._lock:
                self._paused_until = now + PAUSE_AFTER_FAILURE_S
                warn = now - self._warned_at >= WARN_EVERY_S
                if warn:
                    self._warned_at = now
            if warn:
                log.warning("could not publish prediction events to Redis; dropping them (%s)", exc)
            return False

    def close(self) -> None:
        self._client.close()
