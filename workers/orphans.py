"""Messages a dead worker took from the broker: found, so that what it held runs elsewhere
within about a lease, not after the broker's visibility timeout (an hour).

Kombu's Redis transport keeps every message delivered and not yet acknowledged in the hash
`unacked` (delivery tag -> [message, exchange, routing key]) and its delivery time in the sorted
set `unacked_index`; it puts a message back in its queue only once the visibility timeout has
passed. A live worker leases, within a third of a lease, every prediction whose message it has
received (workers/leases.py). So the queued predictions of a message delivered longer than a
lease ago that have no lease were held by a worker that died: the sweeper publishes them again
(workers/sweeper.py), then forgets the message once no live worker holds any of its
predictions, so it is not delivered a second time an hour later.
"""

import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from common.contract import RUN_PREDICTION_TASK

log = logging.getLogger(__name__)

# kombu.transport.redis.Channel's defaults (transport options `unacked_key`, `unacked_index_key`).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
LIMIT = 500


@dataclass(frozen=True)
class Delivered:
    """A prediction message delivered to a worker and never acknowledged."""

    tag: str
    prediction_ids: list[str]


def delivered_before(client: redis.Redis, seconds_ago: float) -> list[Delivered]:
    """Prediction messages delivered more than `seconds_ago` and not acknowledged since (the
    oldest first, up to LIMIT)."""
    ceiling = time.time() - seconds_ago
    tags: list[Any] = client.zrangebyscore(UNACKED_INDEX, "-inf", ceiling, start=0, num=LIMIT)
    if not tags:
        return []
    found = []
    for tag, raw in zip(tags, client.hmget(UNACKED, tags), strict=True):
        ids = _prediction_ids(raw) if raw is not None else None
        if ids:
            found.append(Delivered(tag.decode() if isinstance(tag, bytes) else tag, ids))
    return found


def forget(client: redis.Redis, tags: list[str]) -> None:
    """What kombu's ack does: the message is done with and never comes back."""
    if tags:
        pipe = client.pipeline()
        pipe.zrem(UNACKED_INDEX, *tags)
        pipe.hdel(UNACKED, *tags)
        pipe.execute()


def _prediction_ids(raw: bytes | str) -> list[str] | None:
    """The ids a `run` message carries; None for any other message (or one not understood)."""
    try:
        payload: dict[str, Any] = json.loads(raw)[0]
        if payload.get("headers", {}).get("task") != RUN_PREDICTION_TASK:
            return None
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        ids = json.loads(body)[0][0]  # protocol 2: [args, kwargs, embed]; args[0] is the ids
    except (ValueError, KeyError, IndexError, TypeError):
        log.warning("an unacknowledged message could not be read; leaving it", exc_info=True)
        return None
    ids = [ids] if isinstance(ids, str) else ids
    return [id for id in ids if isinstance(id, str)] if isinstance(ids, list) else None
