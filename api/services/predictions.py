"""Creating, reading, listing and canceling predictions."""

import base64
import binascii
import hashlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from functools import partial

from api import metrics
from api.deps import Transaction, owner_scope
from api.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unprocessable,
)
from api.queue import enqueue_prediction
from api.schemas.predictions import (
    PredictionCreate,
    PredictionOut,
    PredictionPage,
)
from api.services.inputs import validate_input
from api.settings import ApiSettings
from db import log_format, webhook_guard
from db.ids import is_id
from db.prediction_object import prediction_object
from db.repositories import idempotency_keys, models, predictions
from db.repositories.predictions import UNFINISHED, Cursor, PredictionWithModel
from db.session import session_scope
from db.tables import ALL_EVENTS, ModelVersion, PredictionStatus, User

log = logging.getLogger(__name__)


def to_out(row: PredictionWithModel, base_url: str) -> PredictionOut:
    return PredictionOut.model_validate(prediction_object(row.prediction, row.model, base_url))


def _resolve_version(tx: Transaction, body: PredictionCreate) -> tuple[ModelVersion, str]:
    if body.version is not None:
        found = models.get_version(tx.session, id=body.version)
        if found is None:
            raise Unprocessable(
                f"No model version {body.version!r}",
                invalid_fields=[{"field": "version", "message": "No such model version"}],
            )
        return found
    assert body.model is not None
    owner, _, name = body.model.partition("/")
    model = models.get(tx.session, owner=owner, name=name)
    if model is None or model.latest_version is None:
        reason = "No such model" if model is None else "Model has no versions"
        raise Unprocessable(
            f"{reason}: {body.model!r}", invalid_fields=[{"field": "model", "message": reason}]
        )
    return model.latest_version, model.ref


CANCEL_AFTER = re.compile(r"^(?:(\d{1,4})h)?(?:(\d{1,6})m)?(?:(\d{1,8})s)?$")
MAX_CANCEL_AFTER = timedelta(days=7)


def parse_cancel_after(value: str) -> timedelta:
    """`30s`, `5m`, `1h`, `1h30m`: a duration from 1 s to 7 days."""
    match = CANCEL_AFTER.match(value.strip())
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
        raise Unprocessable(
            f"Idempotency-Key: {reason}",
            invalid_fields=[{"field": "Idempotency-Key", "message": reason}],
        )
    return seen.prediction_id


def _check_backlog(
    tx: Transaction, user: User, version_id: str, model_ref: str, settings: ApiSettings
) -> None:
    found = predictions.backlog(
        tx.session,
        version_id=version_id,
        owner_id=user.id,
        version_limit=settings.max_queued_per_version,
        owner_limit=settings.max_in_flight_per_user,
    )
    if found.unfinished_for_owner >= settings.max_in_flight_per_user:
        raise TooManyRequests(
            f"You have {settings.max_in_flight_per_user} predictions in flight, the most "
            "allowed: wait for some to finish",
            headers={"Retry-After": "5"},
        )
    if found.queued_for_version >= settings.max_queued_per_version:
        raise ServiceUnavailable(
            f"{model_ref} has {settings.max_queued_per_version} predictions queued already; "
            "try again later",
            headers={"Retry-After": "10"},
        )


def create(
    tx: Transaction,
    user: User,
    body: PredictionCreate,
    base_url: str,
    settings: ApiSettings,
    cancel_after: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[PredictionOut, bool]:
    """The new prediction, or with an Idempotency-Key seen before, the one it created (then the
    flag is True)."""
    deadline = (
        None if cancel_after is None else datetime.now(UTC) + parse_cancel_after(cancel_after)
    )
    events = _check_webhook(body)  # before any query: a slow resolver holds no connection
    if idempotency_key is not None:
        request_hash = _request_hash(body, cancel_after)
        replayed = _replay(tx, user, idempotency_key, request_hash)
        if replayed is not None:
            return get(tx, user, replayed, base_url), True
    version, model_ref = _resolve_version(tx, body)
    validated = validate_input(version.input_schema, body.input, settings.max_input_string_chars)
    _check_backlog(tx, user, version.id, model_ref, settings)
    prediction = predictions.create(
        tx.session,
        owner_id=user.id,
        version_id=version.id,
        input=validated,
        deadline=deadline,
        webhook=body.webhook,
        webhook_events_filter=events,
    )
    # This thread-pool call runs in a copy of the request's context: the id stays with it.
    log_format.prediction_id.set(prediction.id)
    if idempotency_key is not None:
        idempotency_keys.put(
            tx.session,
            owner_id=user.id,
            key=idempotency_key,
            request_hash=request_hash,
            prediction_id=prediction.id,
        )
    tx.after_commit.append(partial(_enqueue, prediction.id, version.id, version.hardware))
    tx.after_commit.append(metrics.CREATED.labels(model_ref).inc)
    return to_out(PredictionWithModel(prediction, model_ref), base_url), False


def _check_webhook(body: PredictionCreate) -> list[str] | None:
    """The events to send (all by default), once the SSRF guard accepts the webhook."""
    if body.webhook is None:
        return None
    try:
        webhook_guard.check(body.webhook)
    except webhook_guard.RefusedUrl as exc:
        raise Unprocessable(
            f"webhook: {exc}", invalid_fields=[{"field": "webhook", "message": str(exc)}]
        ) from None
    return [str(event) for event in body.webhook_events_filter or ALL_EVENTS]


def _enqueue(prediction_id: str, version_id: str, hardware: str) -> None:
    """After commit. If Redis is down, say so in the row: the workers' sweeper sends it later."""
    # Called from the transaction dependency's exit: another thread-pool call than create's.
    log_format.prediction_id.set(prediction_id)
    if enqueue_prediction(prediction_id, version_id, hardware):
        log.info("prediction created and queued for version %s", version_id)
    else:
        try:
            with session_scope() as session:
                predictions.mark_not_enqueued(session, ids=[prediction_id])
        except Exception:  # then the sweeper finds it by the age of its enqueue mark
            log.exception("could not mark prediction %s as not enqueued", prediction_id)


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


def _encode_cursor(direction: str, row: PredictionWithModel) -> str:
    raw = json.dumps([direction, row.prediction.created_at.isoformat(), row.prediction.id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, Cursor]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, created_at, prediction_id = json.loads(raw)
        position = Cursor(datetime.fromisoformat(created_at), prediction_id)
        if direction not in ("next", "previous") or position.created_at.tzinfo is None:
            raise ValueError(direction)
        if not isinstance(prediction_id, str) or not is_id(prediction_id):
            raise ValueError(prediction_id)
        return direction, position
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadRequest("Invalid cursor: pass back a `next` or `previous` URL as given") from exc


def list_page(
    tx: Transaction, user: User, cursor: str | None, page_size: int, base_url: str
) -> PredictionPage:
    """Newest first. `next` goes to older predictions, `previous` to newer ones."""
    direction, position = _decode_cursor(cursor) if cursor else ("next", None)
    rows = predictions.list(
        tx.session,
        owner_id=owner_scope(user),
        limit=page_size + 1,
        after=position if direction == "next" else None,
        before=position if direction == "previous" else None,
    )
    more = len(rows) > page_size
    if direction == "next":
        rows = rows[:page_size]
        has_older, has_newer = more, position is not None
    else:
        rows = rows[1:] if more else rows
        has_older, has_newer = True, more

    def link(direction: str, row: PredictionWithModel) -> str:
        token = _encode_cursor(direction, row)
        return f"{base_url}/v1/predictions?cursor={token}&page_size={page_size}"

    return PredictionPage(
        next=link("next", rows[-1]) if rows and has_older else None,
        previous=link("previous", rows[0]) if rows and has_newer else None,
        results=[to_out(row, base_url) for row in rows],
    )
