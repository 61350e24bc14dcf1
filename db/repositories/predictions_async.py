"""Creating a prediction on the API's hot path: one statement on an autocommit psycopg
connection, so it is one round trip and durable when it returns.

The statement counts the backlog (each count only up to its scan limit: the limit itself, or
0 where the caller knows there is room, api/backlog.py) and inserts the row only when both
counts are under their limits. Like the two-step check of the
Idempotency-Key path (`backlog`, then `create`), it takes no lock: concurrent creates may
overshoot a limit by a few. An input the result cache may hold gets a larger statement that
also looks for its entry and, on a hit, inserts the prediction already `succeeded`; every
other create keeps the plain one (the larger one measured up to 0.2 ms more per create).
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from db.repositories.predictions import Backlog, PredictionWithModel
from db.tables import Prediction, PredictionSource

# Both counts, each only up to its scan limit (0: not counted), for the inserts below.
_BACKLOG = """
WITH queued AS (
    SELECT count(*) AS n FROM (
        SELECT 1 FROM predictions
        WHERE version_id = %(version_id)s AND status = 'starting'
        LIMIT %(version_scan)s
    ) AS rows
), in_flight AS (
    SELECT count(*) AS n FROM (
        SELECT 1 FROM predictions
        WHERE owner_id = %(owner_id)s AND status IN ('starting', 'processing')
        LIMIT %(owner_scan)s
    ) AS rows
), """

# A result cache entry for the new prediction's input (api/services/result_cache.py): the
# newest of the version's succeeded predictions with that key within the TTL, the caller's own
# unless the cache is shared, with no files.
_CACHED = """cached AS (
    SELECT c.id, c.owner_id, c.output, c.metrics, c.completed_at FROM predictions c
    WHERE c.version_id = %(version_id)s AND c.cache_key = %(cache_key)s
        AND c.status = 'succeeded'
        AND c.completed_at > now() - make_interval(secs => %(cache_ttl_s)s)
        AND (%(cache_owner_id)s::text IS NULL OR c.owner_id = %(cache_owner_id)s)
        AND NOT EXISTS (SELECT FROM files f WHERE f.prediction_id = c.id)
    ORDER BY c.completed_at DESC
    LIMIT 1
), """
# A hit's metrics: nothing was computed; a language model's token counts are the entry's.
_HIT_METRICS = """jsonb_build_object('cache_hit', true, 'predict_time', 0)
    || jsonb_strip_nulls(jsonb_build_object(
        'input_token_count', cached.metrics->'input_token_count',
        'output_token_count', cached.metrics->'output_token_count'))"""
_HIT_LOGS = """'Served from the result cache: the output of '
    || CASE WHEN cached.owner_id = %(owner_id)s THEN 'prediction ' || cached.id
       ELSE 'a prediction' END
    || ', succeeded at ' || to_char(cached.completed_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"') || E'\\n'"""

_CREATE_WITHIN_LIMITS = (
    _BACKLOG  # noqa: S608 (constants only)
    + """inserted AS (
    INSERT INTO predictions (
        id, owner_id, version_id, input, deadline, webhook, webhook_events_filter,
        status, enqueued_at, source
    )
    SELECT %(id)s, %(owner_id)s, %(version_id)s, %(input)s, %(deadline)s, %(webhook)s,
        %(webhook_events_filter)s, 'starting', now(), %(source)s
    FROM queued, in_flight
    WHERE queued.n < %(version_limit)s AND in_flight.n < %(owner_limit)s
    RETURNING created_at
)
SELECT queued.n, in_flight.n, (SELECT created_at FROM inserted) FROM queued, in_flight
"""
)
# The same for an input the cache may hold (a bigger statement: only where it can pay off).
_CREATE_WITHIN_LIMITS_OR_FROM_CACHE = (
    _BACKLOG  # noqa: S608 (constants only)
    + _CACHED
    + f"""inserted AS (
    INSERT INTO predictions (
        id, owner_id, version_id, input, deadline, webhook, webhook_events_filter,
        status, enqueued_at, source, cache_key, output, metrics, logs, started_at, completed_at
    )
    SELECT %(id)s, %(owner_id)s, %(version_id)s, %(input)s, %(deadline)s, %(webhook)s,
        %(webhook_events_filter)s,
        CASE WHEN cached.id IS NULL THEN 'starting' ELSE 'succeeded' END,
        CASE WHEN cached.id IS NULL THEN now() END, %(source)s, %(cache_key)s, cached.output,
        CASE WHEN cached.id IS NULL THEN '{{}}'::jsonb ELSE {_HIT_METRICS} END,
        CASE WHEN cached.id IS NULL THEN '' ELSE {_HIT_LOGS} END,
        CASE WHEN cached.id IS NOT NULL THEN now() END,
        CASE WHEN cached.id IS NOT NULL THEN now() END
    FROM queued CROSS JOIN in_flight LEFT JOIN cached ON true
    -- A hit queues nothing: the backlog limits do not refuse it.
    WHERE cached.id IS NOT NULL
        OR (queued.n < %(version_limit)s AND in_flight.n < %(owner_limit)s)
    RETURNING created_at, status, output, metrics, logs
)
SELECT queued.n, in_flight.n, inserted.created_at, inserted.status = 'succeeded',
    inserted.output, inserted.metrics, inserted.logs
FROM queued CROSS JOIN in_flight LEFT JOIN inserted ON true
"""  # noqa: S608 (constants only)
)


@dataclass(frozen=True)
class CacheLookup:
    """A result cache entry to look for: one under `key` younger than `ttl_s`, of `owner_id`
    (None: anyone's)."""

    key: bytes
    ttl_s: int
    owner_id: str | None


@dataclass(frozen=True)
class ManyCacheLookup:
    """`CacheLookup` for several inputs: a key for each (None: that input is not cached)."""

    keys: list[bytes | None]
    ttl_s: int
    owner_id: str | None


@dataclass(frozen=True)
class Hit:
    """A prediction created already `succeeded` from the result cache."""

    output: Any
    metrics: dict[str, Any]
    logs: str


@dataclass(frozen=True)
class Created:
    """`created_at` of the new row, or None when the backlog was at a limit and nothing was
    inserted. The row is `starting` (marked as enqueued: the caller publishes it), unless the
    result cache answered it (`hit`)."""

    created_at: datetime | None
    backlog: Backlog
    hit: Hit | None = None
    hits: dict[str, Hit] = field(default_factory=dict)  # several inputs: the hits by id


async def create_within_limits(
    conn: AsyncConnection[Any],
    *,
    id: str,
    owner_id: str,
    version_id: str,
    input: dict[str, Any],
    deadline: datetime | None,
    webhook: str | None,
    webhook_events_filter: list[str] | None,
    version_limit: int,
    owner_limit: int,
    version_scan: int | None = None,
    owner_scan: int | None = None,
    source: str = PredictionSource.API,
    cache: CacheLookup | None = None,
) -> Created:
    """Scans default to the limits (exact counts); 0 skips a count (it reads as 0). `cache`:
    answer from the result cache if it holds this input."""
    parameters = {
        "source": source,
        "id": id,
        "owner_id": owner_id,
        "version_id": version_id,
        "input": Jsonb(input),
        "deadline": deadline,
        "webhook": webhook,
        "webhook_events_filter": webhook_events_filter,
        "version_limit": version_limit,
        "owner_limit": owner_limit,
        "version_scan": version_limit if version_scan is None else version_scan,
        "owner_scan": owner_limit if owner_scan is None else owner_scan,
    }
    hit = None
    if cache is None:
        cursor = await conn.execute(_CREATE_WITHIN_LIMITS, parameters)
        row = await cursor.fetchone()
        assert row is not None  # the final SELECT always has one row
        queued, in_flight, created_at = row
    else:
        parameters |= {"cache_key": cache.key, "cache_ttl_s": cache.ttl_s,
                       "cache_owner_id": cache.owner_id}  # fmt: skip
        cursor = await conn.execute(_CREATE_WITHIN_LIMITS_OR_FROM_CACHE, parameters)
        row = await cursor.fetchone()
        assert row is not None
        queued, in_flight, created_at, answered, output, metrics, logs = row
        hit = Hit(output, metrics, logs) if answered else None
    backlog = Backlog(queued_for_version=queued, unfinished_for_owner=in_flight)
    return Created(created_at, backlog, hit)


_SELECT = """
SELECT p.id, p.owner_id, p.version_id, p.input, p.output, p.logs, p.error, p.status,
    p.attempts, p.metrics, p.created_at, p.started_at, p.completed_at, p.deadline,
    p.webhook, p.webhook_events_filter, p.source, u.username || '/' || m.name
FROM predictions p
JOIN model_versions v ON v.id = p.version_id
JOIN models m ON m.id = v.model_id
JOIN users u ON u.id = m.owner_id
"""
_OWNED = "(%(owner_id)s::text IS NULL OR p.owner_id = %(owner_id)s)"
_GET_MANY = f"{_SELECT} WHERE p.id = ANY(%(ids)s::text[]) AND {_OWNED}"
_FIELDS = [
    "id",
    "owner_id",
    "version_id",
    "input",
    "output",
    "logs",
    "error",
    "status",
    "attempts",
    "metrics",
    "created_at",
    "started_at",
    "completed_at",
    "deadline",
    "webhook",
    "webhook_events_filter",
    "source",
]


async def get_many(
    conn: AsyncConnection[Any], *, ids: list[str], owner_id: str | None = None
) -> list[PredictionWithModel]:
    """Predictions with their model's name (`predictions.get` of several, on the event loop)
    in one round trip, in the order of `ids`; those that are not there (or not the owner's)
    are left out. Detached rows, never added to a session."""
    cursor = await conn.execute(_GET_MANY, {"ids": ids, "owner_id": owner_id})
    found = {row.prediction.id: row for row in map(_with_model, await cursor.fetchall())}
    return [found[id] for id in ids if id in found]


def _with_model(row: tuple[Any, ...]) -> PredictionWithModel:
    return PredictionWithModel(Prediction(**dict(zip(_FIELDS, row[:-1], strict=True))), row[-1])


_CREATE_MANY_WITHIN_LIMITS = (
    _BACKLOG  # noqa: S608 (constants only)
    + """inserted AS (
    INSERT INTO predictions (id, owner_id, version_id, input, status, enqueued_at, source)
    SELECT new.id, %(owner_id)s, %(version_id)s, new.input, 'starting', now(), %(source)s
    FROM unnest(%(ids)s::text[], %(inputs)s::jsonb[]) AS new(id, input), queued, in_flight
    WHERE queued.n + %(count)s <= %(version_limit)s AND in_flight.n + %(count)s <= %(owner_limit)s
    RETURNING created_at
)
SELECT queued.n, in_flight.n, (SELECT min(created_at) FROM inserted) FROM queued, in_flight
"""
)


# The same, each input looking for its own result cache entry (as _CACHED, by key): the hits
# are inserted `succeeded`. All or none still: the backlog must have room for every input.
_CREATE_MANY_WITHIN_LIMITS_OR_FROM_CACHE = (
    _BACKLOG  # noqa: S608 (constants only)
    + f"""new AS (
    SELECT * FROM unnest(%(ids)s::text[], %(inputs)s::jsonb[], %(keys)s::bytea[])
        AS new(id, input, key)
), cached AS (
    SELECT DISTINCT ON (new.id) new.id AS new_id, c.id, c.owner_id, c.output, c.metrics,
        c.completed_at
    FROM new JOIN predictions c ON c.version_id = %(version_id)s AND c.cache_key = new.key
    WHERE c.status = 'succeeded'
        AND c.completed_at > now() - make_interval(secs => %(cache_ttl_s)s)
        AND (%(cache_owner_id)s::text IS NULL OR c.owner_id = %(cache_owner_id)s)
        AND NOT EXISTS (SELECT FROM files f WHERE f.prediction_id = c.id)
    ORDER BY new.id, c.completed_at DESC
), inserted AS (
    INSERT INTO predictions (
        id, owner_id, version_id, input, status, enqueued_at, source, cache_key, output,
        metrics, logs, started_at, completed_at
    )
    SELECT new.id, %(owner_id)s, %(version_id)s, new.input,
        CASE WHEN cached.id IS NULL THEN 'starting' ELSE 'succeeded' END,
        CASE WHEN cached.id IS NULL THEN now() END, %(source)s, new.key, cached.output,
        CASE WHEN cached.id IS NULL THEN '{{}}'::jsonb ELSE {_HIT_METRICS} END,
        CASE WHEN cached.id IS NULL THEN '' ELSE {_HIT_LOGS} END,
        CASE WHEN cached.id IS NOT NULL THEN now() END,
        CASE WHEN cached.id IS NOT NULL THEN now() END
    FROM new LEFT JOIN cached ON cached.new_id = new.id, queued, in_flight
    WHERE queued.n + %(count)s <= %(version_limit)s AND in_flight.n + %(count)s <= %(owner_limit)s
    RETURNING id, created_at, status, output, metrics, logs
)
SELECT queued.n, in_flight.n, (SELECT min(created_at) FROM inserted),
    (SELECT coalesce(jsonb_agg(jsonb_build_array(id, output, metrics, logs)), '[]'::jsonb)
     FROM inserted WHERE status = 'succeeded')
FROM queued, in_flight
"""  # noqa: S608 (constants only)
)


async def create_many_within_limits(
    conn: AsyncConnection[Any],
    *,
    ids: list[str],
    owner_id: str,
    version_id: str,
    inputs: list[dict[str, Any]],
    version_limit: int,
    owner_limit: int,
    version_scan: int | None = None,
    owner_scan: int | None = None,
    source: str = PredictionSource.API,
    cache: ManyCacheLookup | None = None,
) -> Created:
    """`create_within_limits` for several inputs of one version (no deadline, no webhook): all
    of them, in one statement, if the backlog leaves room for all, else none. They share one
    `created_at`. A count need only scan `limit - len(ids) + 1` rows to tell. `cache`: each
    input with a key is answered from the result cache if it holds it (`hits`, by id)."""
    room = len(ids) - 1
    parameters = {
        "ids": ids,
        "inputs": [Jsonb(item) for item in inputs],
        "count": len(ids),
        "owner_id": owner_id,
        "version_id": version_id,
        "source": source,
        "version_limit": version_limit,
        "owner_limit": owner_limit,
        "version_scan": version_limit - room if version_scan is None else version_scan,
        "owner_scan": owner_limit - room if owner_scan is None else owner_scan,
    }
    if cache is None:
        cursor = await conn.execute(_CREATE_MANY_WITHIN_LIMITS, parameters)
        row = await cursor.fetchone()
        assert row is not None  # the final SELECT always has one row
        queued, in_flight, created_at = row
        hits = {}
    else:
        parameters |= {"keys": cache.keys, "cache_ttl_s": cache.ttl_s,
                       "cache_owner_id": cache.owner_id}  # fmt: skip
        cursor = await conn.execute(_CREATE_MANY_WITHIN_LIMITS_OR_FROM_CACHE, parameters)
        row = await cursor.fetchone()
        assert row is not None
        queued, in_flight, created_at, answered = row
        hits = {id: Hit(output, metrics, logs) for id, output, metrics, logs in answered}
    backlog = Backlog(queued_for_version=queued, unfinished_for_owner=in_flight)
    return Created(created_at, backlog, hits=hits)


_CANCEL = """
UPDATE predictions
SET status = 'canceled', completed_at = now(), lease_expires_at = NULL
WHERE id = ANY(%(ids)s::text[]) AND status IN ('starting', 'processing')
    AND (%(owner_id)s::text IS NULL OR owner_id = %(owner_id)s)
RETURNING id
"""


async def cancel(
    conn: AsyncConnection[Any], *, ids: list[str], owner_id: str | None = None
) -> list[str]:
    """Cancel those of `ids` that are unfinished, as `POST .../cancel` does (the worker hears
    it through the status NOTIFY); returns them."""
    cursor = await conn.execute(_CANCEL, {"ids": ids, "owner_id": owner_id})
    return [id for (id,) in await cursor.fetchall()]
