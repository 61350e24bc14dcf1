"""Whether Redis still holds the messages sent to it, or lost them (restarted without
persistence, flushed, or a new server): a marker key per kind of message, set once the rows
that need a message have been sent again.

While the marker is there, every message sent since it was set is still in Redis or was
delivered. When it is gone, so may they be: the sweeper (predictions) and the dispatcher
(webhook deliveries) then send again everything PostgreSQL says is waiting for one, at once,
instead of after the requeue interval that covers a single lost message. A duplicate is
harmless: claims are conditional.
"""

import contextlib

import redis

KEY_PREFIX = "quern:broker-kept:"


def lost(client: redis.Redis, kind: str) -> bool:
    """True when the marker of `kind` is gone. False when Redis cannot be asked: then nothing
    can be sent either, and the next look decides."""
    try:
        return not client.exists(f"{KEY_PREFIX}{kind}")
    except redis.RedisError:
        return False


def kept(client: redis.Redis, kind: str) -> None:
    """Everything waiting has been sent again: set the marker."""
    with contextlib.suppress(redis.RedisError):  # else asked again next time: harmless
        client.set(f"{KEY_PREFIX}{kind}", "1")
