"""Creating, reading, listing and canceling predictions."""

import hashlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.concurrency import run_in_threadpool

from api import backlog, database, metrics
from api.cache import Cache
from api.deps import Transaction, owner_scope
from api.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unprocessable,
)
from api.finished_reads import FinishedReads
from api.queue import Publisher
from api.schemas.predictions import (
    PredictionCreate,
    PredictionFilters,
    PredictionOut,
    PredictionPage,
)
from api.services import file_inputs, result_cache, versions
from api.services.inputs import validate_input
from api.services.versions import Version
from api.settings import ApiSettings
from common import log_format, webhook_guard
from common.prediction_object import prediction_object
from db.ids import is_id, new_id
from db.repositories import idempotency_keys, predictions, predictions_async
from db.repositories.predictions import UNFINISHED, Backlog, Cursor, PredictionWithModel
from db.repositories.predictions_async import Hit
from db.session import session_scope
from db.tables import ALL_EVENTS, Prediction, PredictionSource, PredictionStatus, User

log = logging.getLogger(__name__)


def to_out(row: PredictionWithModel, base_url: str) -> PredictionOut:
    return PredictionOut.model_validate(prediction_object(row.prediction, row.model, base_url))


CANCEL_AFTER = re.compile(r"^(?:(\d{1,4})h)?(?:(\d{1,6})m)?(?:(\d{1,8})s)?$")
SECONDS = re.compile(r"^\d{1,8}$")  # a bare number is seconds, as Replicate reads it
MAX_CANCEL_AFTER = timedelta(days=7)


def parse_cancel_after(value: str) -> timedelta:
    """`30s`, `5m`, `1h`, `1h30m`, or `30` (seconds): a duration from 1 s to 7 days. The header
    is checked against CANCEL_AFTER_PATTERN first (a 422), which admits only what this reads."""
    text = value.strip()
    match = CANCEL_AFTER.match(text + "s" if SECONDS.match(text) else text)
    if not value.strip() or match is None:
        raise BadRequest(f"Cancel-After {value!r} is not a duration like 30s, 5m, 1h or 1h30m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    duration = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if not timedelta(seconds=1) <= duration <= MAX_CANCEL_AFTER:
        raise BadRequest(f"Cancel-After {value!r} must be between 1s and 7 days")
    return duration


def _request_hash(body: PredictionCreate, cancel_after: str | None) -> str:
    """What makes two creates the same request: the body's meaning, not its formatting."""
    canonical = json.dumps(
        {"body": body.model_dump(mode="json"), "cancel_after": cancel_after},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(tx: Transaction, user: User, key: str, request_hash: str) -> str | None:
    """The prediction an earlier request with this key created (24 h), if any. 409 while that
    request is still in progress, 422 if it was a different request."""
    if not idempotency_keys.try_lock(tx.session, owner_id=user.id, key=key):
        raise Conflict("A request with this Idempotency-Key is still in progress; retry shortly")
    seen = idempotency_keys.get(tx.session, owner_id=user.id, key=key)
    if seen is None:
        return None
    if seen.request_hash != request_hash:
        reason = "Already used with a different request in the last 24 hours"
        raise Unprocessable.field("Idempotency-Key", reason)
    return seen.prediction_id


def _refuse(found: Backlog, model_ref: str, settings: ApiSettings, count: int = 1) -> None:
    """429 when the caller has too many in flight, 503 when the version's queue is full (for
    `count` more predictions)."""
    if found.unfinished_for_owner + count > settings.max_in_flight_per_user:
        limit = settings.max_in_flight_per_user
        reason = (
            f"You have {limit} predictions in flight, the most allowed"
            if count == 1
            else f"{count} more predictions would pass your limit of {limit} in flight"
        )
        raise TooManyRequests(f"{reason}: wait for some to finish", headers={"Retry-After": "5"})
    if found.queued_for_version + count > settings.max_queued_per_version:
        raise ServiceUnavailable(
            f"{model_ref} has {settings.max_queued_per_version} predictions queued already; "
            "try again later",
            headers={"Retry-After": "10"},
        )


def _deadline(cancel_after: str | None) -> datetime | None:
    return None if cancel_after is None else datetime.now(UTC) + parse_cancel_after(cancel_after)


async def create(
    pool: AsyncConnectionPool,
    publisher: Publisher,
    cache: Cache[Version],
    user: User,
    body: PredictionCreate,
    base_url: str,
    settings: ApiSettings,
    cancel_after: str | None = None,
    prediction_id: str | None = None,
    *,
    version: Version | None = None,
    source: PredictionSource = PredictionSource.API,
) -> PredictionOut:
    """The new prediction (`prediction_id`, or a new id): stored (backlog checked in the same
    statement) and committed in one round trip, then handed to the publisher. Nothing here
    waits on a thread but a cache miss or a webhook's DNS lookup. `version`: the one `body`
    names, if the caller has resolved it already."""
    deadline = _deadline(cancel_after)
    events = None if body.webhook is None else await run_in_threadpool(_check_webhook, body)
    version = version or await versions.resolve(cache, body)
    validated = validate_input(
        version.validator, body.input, settings.max_input_string_chars, version.file_fields
    )
    if version.file_fields:
        await run_in_threadpool(file_inputs.check, user, validated, version.file_fields, settings)
    prediction_id = prediction_id or new_id()
    scans = backlog.scans(
        version.id, user.id, settings.max_queued_per_version, settings.max_in_flight_per_user
    )
    in_cache = result_cache.lookup(version.cache, validated, user.id, version.file_fields)
    try:
        async with database.connection(pool) as conn:
            created = await predictions_async.create_within_limits(
                conn,
                id=prediction_id,
                owner_id=user.id,
                version_id=version.id,
                input=validated,
                deadline=deadline,
                webhook=body.webhook,
                webhook_events_filter=events,
                version_limit=settings.max_queued_per_version,
                owner_limit=settings.max_in_flight_per_user,
                version_scan=scans.version,
                owner_scan=scans.owner,
                source=source,
                cache=in_cache,
            )
    except psycopg.errors.ForeignKeyViolation:
        # The version was deleted after this process cached it, before it heard the notice.
        cache.clear()
        raise versions.missing(body) from None
    scans.counted(created.backlog)
    if created.created_at is None:
        _refuse(created.backlog, version.model_ref, settings)
    log_format.prediction_id.set(prediction_id)
    log.debug("prediction created for version %s", version.id)
    metrics.CREATED.labels(version.model_ref).inc()
    if in_cache is not None:
        counter = metrics.CACHE_HITS if created.hit else metrics.CACHE_MISSES
        counter.labels(version.model_ref).inc()
    if created.hit is None:
        publisher.submit(prediction_id, version.id, version.hardware)
    return _queued(
        prediction_id, user, version, validated, created.created_at, base_url, source,
        deadline=deadline, webhook=body.webhook, webhook_events_filter=events, hit=created.hit,
    )  # fmt: skip


async def create_many(
    pool: AsyncConnectionPool,
    publisher: Publisher,
    cache: Cache[Version],
    user: User,
    version: Version,
    inputs: list[dict[str, Any]],
    base_url: str,
    settings: ApiSettings,
    prediction_ids: list[str],
    *,
    source: PredictionSource = PredictionSource.API,
) -> list[PredictionOut]:
    """`create` of one prediction per input of `version` (validated already: `validate_input`),
    all or none, in one round trip: they are queued together, so they run batched."""
    # Room for all of them: each count only has to reach `limit - (count - 1)` to tell.
    version_limit = settings.max_queued_per_version - len(inputs) + 1
    owner_limit = settings.max_in_flight_per_user - len(inputs) + 1
    scans = backlog.scans(version.id, user.id, version_limit, owner_limit)
    in_cache = result_cache.lookup_many(version.cache, inputs, user.id)
    try:
        async with database.connection(pool) as conn:
            created = await predictions_async.create_many_within_limits(
                conn,
                ids=prediction_ids,
                owner_id=user.id,
                version_id=version.id,
                inputs=inputs,
                version_limit=settings.max_queued_per_version,
                owner_limit=settings.max_in_flight_per_user,
                version_scan=scans.version,
                owner_scan=scans.owner,
                source=source,
                cache=in_cache,
            )
    except psycopg.errors.ForeignKeyViolation:
        cache.clear()  # the version was deleted after this process cached it
        raise versions.missing(PredictionCreate(version=version.id, input={})) from None
    scans.counted(created.backlog)
    if created.created_at is None:
        _refuse(created.backlog, version.model_ref, settings, len(inputs))
    log.debug("%d predictions created for version %s", len(inputs), version.id)
    for prediction_id in prediction_ids:
        if prediction_id not in created.hits:
            publisher.submit(prediction_id, version.id, version.hardware)
    metrics.CREATED.labels(version.model_ref).inc(len(inputs))
    if in_cache is not None:
        looked = sum(key is not None for key in in_cache.keys)
        metrics.CACHE_HITS.labels(version.model_ref).inc(len(created.hits))
        metrics.CACHE_MISSES.labels(version.model_ref).inc(looked - len(created.hits))
    return [
        _queued(
            prediction_id,
            user,
            version,
            item,
            created.created_at,
            base_url,
            source,
            hit=created.hits.get(prediction_id),
        )
        for prediction_id, item in zip(prediction_ids, inputs, strict=True)
    ]


async def cancel_async(
    pool: AsyncConnectionPool, user: User, prediction_ids: list[str], model_ref: str
) -> None:
    """Cancel those of the user's `prediction_ids` (of `model_ref`) that are unfinished, on the
    event loop."""
    async with database.connection(pool) as conn:
        canceled = await predictions_async.cancel(
            conn, ids=prediction_ids, owner_id=owner_scope(user)
        )
    if canceled:
        log.info("predictions canceled: %s", " ".join(canceled))
        metrics.CANCELED.labels(model_ref).inc(len(canceled))


async def load_many_async(
    pool: AsyncConnectionPool, user: User, prediction_ids: list[str], base_url: str
) -> list[PredictionOut]:
    """`load_async` of several predictions in one round trip, in the order given."""
    async with database.connection(pool) as conn:
        rows = await predictions_async.get_many(
            conn, ids=prediction_ids, owner_id=owner_scope(user)
        )
    if len(rows) != len(prediction_ids):  # deleted with their owner meanwhile
        raise NotFound("The predictions are gone")
    return [to_out(row, base_url) for row in rows]


def _queued(
    prediction_id: str,
    user: User,
    version: Version,
    input: dict[str, Any],
    created_at: datetime | None,
    base_url: str,
    source: str,
    *,
    deadline: datetime | None = None,
    webhook: str | None = None,
    webhook_events_filter: list[str] | None = None,
    hit: Hit | None = None,
) -> PredictionOut:
    """The answer for a prediction just inserted (queued, or answered by the result cache:
    `hit`), built without reading it back."""
    prediction = Prediction(
        id=prediction_id,
        owner_id=user.id,
        version_id=version.id,
        input=input,
        output=None if hit is None else hit.output,
        logs="" if hit is None else hit.logs,
        error=None,
        status=PredictionStatus.STARTING if hit is None else PredictionStatus.SUCCEEDED,
        attempts=0,
        metrics={} if hit is None else hit.metrics,
        created_at=created_at,
        started_at=None if hit is None else created_at,
        completed_at=None if hit is None else created_at,
        deadline=deadline,
        webhook=webhook,
        webhook_events_filter=webhook_events_filter,
        source=source,
    )
    return to_out(PredictionWithModel(prediction, version.model_ref), base_url)


def create_idempotent(
    publisher: Publisher,
    user: User,
    body: PredictionCreate,
    base_url: str,
    settings: ApiSettings,
    cancel_after: str | None,
    idempotency_key: str,
) -> tuple[PredictionOut, bool]:
    """With an Idempotency-Key (in the thread pool, one transaction): the new prediction, or
    the one an earlier request with the key created (then the flag is True)."""
    deadline = _deadline(cancel_after)
    events = _check_webhook(body)  # before any query: a slow resolver holds no connection
    request_hash = _request_hash(body, cancel_after)
    with session_scope() as session:
        tx = Transaction(session)
        replayed = _replay(tx, user, idempotency_key, request_hash)
        if replayed is not None:
            return get(tx, user, replayed, base_url), True
        version = versions.load(session, body)
        validated = validate_input(
            version.validator, body.input, settings.max_input_string_chars, version.file_fields
        )
        file_inputs.check(user, validated, version.file_fields, settings)
        _refuse(
            predictions.backlog(
                session,
                version_id=version.id,
                owner_id=user.id,
                version_limit=settings.max_queued_per_version,
                owner_limit=settings.max_in_flight_per_user,
            ),
            version.model_ref,
            settings,
        )
        prediction = predictions.create(
            session,
            owner_id=user.id,
            version_id=version.id,
            input=validated,
            deadline=deadline,
            webhook=body.webhook,
            webhook_events_filter=events,
        )
        log_format.prediction_id.set(prediction.id)
        idempotency_keys.put(
            session,
            owner_id=user.id,
            key=idempotency_key,
            request_hash=request_hash,
            prediction_id=prediction.id,
        )
    log.debug("prediction created for version %s", version.id)
    publisher.submit(prediction.id, version.id, version.hardware)
    metrics.CREATED.labels(version.model_ref).inc()
    return to_out(PredictionWithModel(prediction, version.model_ref), base_url), False


def _check_webhook(body: PredictionCreate) -> list[str] | None:
    """The events to send (all by default), once the SSRF guard accepts the webhook (it
    resolves the host: blocking)."""
    if body.webhook is None:
        return None
    try:
        webhook_guard.check(body.webhook)
    except webhook_guard.RefusedUrl as exc:
        raise Unprocessable.field("webhook", str(exc)) from None
    return [str(event) for event in body.webhook_events_filter or ALL_EVENTS]


def find(tx: Transaction, user: User, prediction_id: str) -> PredictionWithModel:
    """The user's prediction (any, for an admin); anyone else's, like an unknown or malformed
    id, is the same 404."""
    if not is_id(prediction_id):  # not any string a client sends
        raise NotFound(f"No prediction {prediction_id!r}")
    log_format.prediction_id.set(prediction_id)
    row = predictions.get(tx.session, id=prediction_id, owner_id=owner_scope(user))
    if row is None:
        raise NotFound(f"No prediction {prediction_id!r}")
    return row


def get(tx: Transaction, user: User, prediction_id: str, base_url: str) -> PredictionOut:
    return to_out(find(tx, user, prediction_id), base_url)


def load(user: User, prediction_id: str, base_url: str) -> PredictionOut:
    """`get` in a transaction of its own: for code that runs after the request's has ended."""
    with session_scope() as session:
        return get(Transaction(session), user, prediction_id, base_url)


async def load_async(
    reads: FinishedReads, user: User, prediction_id: str, base_url: str
) -> PredictionOut:
    """`load` on the event loop (no thread hop, no session), read together with the other
    predictions that finished with it: what `Prefer: wait` reads."""
    row = await reads.get(prediction_id)
    owner = owner_scope(user)
    if row is None or (owner is not None and row.prediction.owner_id != owner):
        raise NotFound(f"No prediction {prediction_id!r}")  # deleted with its owner meanwhile
    return to_out(row, base_url)


def cancel(tx: Transaction, user: User, prediction_id: str, base_url: str) -> PredictionOut:
    """Queued: it will never run. Running: the worker hears the change (NOTIFY) and stops it at
    the model's next step (token); its logs are kept, its output is not recorded."""
    if not is_id(prediction_id):
        raise NotFound(f"No prediction {prediction_id!r}")
    log_format.prediction_id.set(prediction_id)
    canceled = predictions.update_status(
        tx.session,
        id=prediction_id,
        owner_id=owner_scope(user),
        from_statuses=UNFINISHED,
        status=PredictionStatus.CANCELED,
    )
    prediction = get(tx, user, prediction_id, base_url)
    if canceled:
        log.info("prediction canceled")
        tx.after_commit.append(metrics.CANCELED.labels(prediction.model).inc)
    return prediction


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _encode_cursor(direction: str, row: PredictionWithModel) -> str:
    """`next.<created_at in microseconds since 1970>.<id>` (CURSOR_PATTERN)."""
    micros = (row.prediction.created_at - _EPOCH) // _MICROSECOND
    return f"{direction}.{micros}.{row.prediction.id}"


def _decode_cursor(cursor: str) -> tuple[str, Cursor]:
    """A cursor the route has checked against CURSOR_PATTERN: every such one is a position."""
    direction, micros, prediction_id = cursor.split(".")
    return direction, Cursor(_EPOCH + int(micros) * _MICROSECOND, prediction_id)


def list_page(
    tx: Transaction,
    user: User,
    cursor: str | None,
    page_size: int,
    base_url: str,
    filters: PredictionFilters | None = None,
) -> PredictionPage:
    """Newest first. `next` goes to older predictions, `previous` to newer ones; both keep
    the filters."""
    filters = filters or PredictionFilters()
    if filters.matches_nothing:
        return PredictionPage(next=None, previous=None, results=[])
    direction, position = _decode_cursor(cursor) if cursor else ("next", None)
    rows = predictions.list(
        tx.session,
        owner_id=owner_scope(user),
        limit=page_size + 1,
        after=position if direction == "next" else None,
        before=position if direction == "previous" else None,
        filters=filters.for_query(),
    )
    more = len(rows) > page_size
    if direction == "next":
        rows = rows[:page_size]
        has_older, has_newer = more, position is not None
    else:
        rows = rows[1:] if more else rows
        has_older, has_newer = True, more

    def link(direction: str, row: PredictionWithModel) -> str:
        query = {"cursor": _encode_cursor(direction, row), "page_size": str(page_size)}
        return f"{base_url}/v1/predictions?{urlencode(query | filters.params())}"

    return PredictionPage(
        next=link("next", rows[-1]) if rows and has_older else None,
        previous=link("previous", rows[0]) if rows and has_newer else None,
        results=[to_out(row, base_url) for row in rows],
    )
