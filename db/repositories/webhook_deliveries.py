"""Webhook deliveries: the outbox rows, their attempts, and what the dispatcher asks of them.

`start` and `completed` rows come from a trigger on predictions (migration 0006's PL/pgSQL
function `quern_webhook_status_events()`); `output` and `logs` rows from the worker running the
prediction. Which event fires when: WebhookEvent (db/tables/webhook_delivery.py). Like
predictions, a delivery changes state only by conditional UPDATEs, so a duplicate message or a
late worker is a no-op.

A prediction's deliveries go one at a time, in the order they were written: migration 0008's
triggers write a delivery `waiting` while another of its prediction is unfinished, and make the
oldest waiting one `pending` when that one ends (succeeded, failed, stopped or skipped), so one
waiting for a retry holds back the later ones. The dispatcher only ever sees `pending` ones:
different predictions' deliveries go in parallel. A superseded `output` or `logs` delivery (a
later one of the same event, or `completed`, was written) is `skipped` instead of sent or
retried; `start` and `completed` never are.

The operations that mean the same as predictions' (db/repositories/predictions.py) have the
same names: `claim` (an attempt, under a lease) and its `Claim`, `record` (its outcome, if the
attempt still owns the row), `requeue_lost` (a worker died holding it), `take_due` (mark for
publishing), `mark_not_enqueued` (publishing failed) and `forget_enqueued` (the message is
taken as lost).
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    any_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, defer

from db.ids import new_id
from db.repositories.predictions import seconds
from db.tables import (
    DeliveryStatus,
    Model,
    ModelVersion,
    Prediction,
    PredictionStatus,
    User,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)

LOST = "The worker was lost during this attempt"
# Written by migration 0008's triggers on a skipped delivery.
SUPERSEDED = "Skipped: a later event of the prediction says all it would have"


def _row() -> ColumnElement[Any]:
    """The prediction row as JSON, as the trigger snapshots it (to_jsonb)."""
    table = cast(Table, Prediction.__table__)
    return func.to_jsonb(table.table_valued(), type_=JSONB)


def _add(
    session: Session,
    *,
    prediction_id: str,
    event: WebhookEvent,
    snapshot: ColumnElement[Any],
    while_attempt_runs: int | None,
) -> str | None:
    """A delivery of `event` if the prediction's webhook wants it (and, given an attempt, only
    while that attempt runs the prediction); its id, or None."""
    source = select(
        literal(new_id()), Prediction.id, literal(str(event)), Prediction.webhook, snapshot
    ).where(
        Prediction.id == prediction_id,
        Prediction.webhook.is_not(None),
        literal(str(event)) == any_(Prediction.webhook_events_filter),
    )
    if while_attempt_runs is not None:
        source = source.where(
            Prediction.status == PredictionStatus.PROCESSING,
            Prediction.attempts == while_attempt_runs,
        )
    columns = ["id", "prediction_id", "event", "url", "snapshot"]
    return session.scalar(
        insert(WebhookDelivery).from_select(columns, source).returning(WebhookDelivery.id)
    )


def add_streamed_output(
    session: Session, *, prediction_id: str, attempt: int, output: Any
) -> str | None:
    """An `output` delivery carrying the output so far, while `attempt` still runs the
    prediction (never from a worker that lost it)."""
    with_output = func.jsonb_build_object("output", bindparam("output", output, type_=JSONB))
    snapshot = _row().op("||", return_type=JSONB)(with_output)
    return _add(
        session,
        prediction_id=prediction_id,
        event=WebhookEvent.OUTPUT,
        snapshot=snapshot,
        while_attempt_runs=attempt,
    )


def add_recorded(session: Session, *, prediction_id: str, event: WebhookEvent) -> str | None:
    """An `output` or `logs` delivery of what this transaction just wrote to the prediction."""
    return _add(
        session,
        prediction_id=prediction_id,
        event=event,
        snapshot=_row(),
        while_attempt_runs=None,
    )


@dataclass(frozen=True)
class DeliveryLog:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


def list_for_prediction(session: Session, *, prediction_id: str, limit: int) -> list[DeliveryLog]:
    """The prediction's latest `limit` deliveries, oldest first, each with its attempts."""
    deliveries = session.scalars(
        select(WebhookDelivery)
        .options(defer(WebhookDelivery.snapshot), defer(WebhookDelivery.body))
        .where(WebhookDelivery.prediction_id == prediction_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
    ).all()
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    for attempt in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(attempts))
        .order_by(WebhookAttempt.number)
    ):
        attempts[attempt.delivery_id].append(attempt)
    return [DeliveryLog(d, attempts[d.id]) for d in reversed(deliveries)]


def redeliver(session: Session, *, prediction_id: str) -> WebhookDelivery | None:
    """A new delivery (new id, no attempts yet) of the latest `completed` delivery, or of the
    latest one before the prediction completes; None if it has none."""
    latest = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.prediction_id == prediction_id)
        .order_by(
            (WebhookDelivery.event == WebhookEvent.COMPLETED).desc(),
            WebhookDelivery.created_at.desc(),
            WebhookDelivery.id.desc(),
        )
        .limit(1)
    ).first()
    if latest is None:
        return None
    copy = WebhookDelivery(
        prediction_id=prediction_id,
        event=latest.event,
        url=latest.url,
        snapshot=latest.snapshot,
        body=latest.body,
        redelivery_of=latest.id,
    )
    session.add(copy)
    session.flush()
    session.refresh(copy, ["status"])  # `waiting` if one is unfinished (migration 0008)
    return copy


@dataclass(frozen=True)
class Claim:
    """A delivery a worker has just taken for one attempt, and what it needs to send it."""

    id: str
    event: str
    url: str
    prediction_id: str
    snapshot: dict[str, Any] | None  # what the body is built from; only until it is frozen
    body: str | None  # None until the first attempt freezes it
    attempt: int  # this attempt's number: only its owner may record the outcome
    created_at: datetime
    owner_id: str
    model: str  # owner/name of the prediction's model


def claim(session: Session, *, id: str, lease_s: float) -> Claim | None:
    """Take delivery `id` for an attempt under a lease, if it is pending and due (else None:
    finished, waiting for a retry, or taken by a duplicate message). Logs the attempt."""
    row = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == id,
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= func.now(),
            Prediction.id == WebhookDelivery.prediction_id,
            ModelVersion.id == Prediction.version_id,
            Model.id == ModelVersion.model_id,
            User.id == Model.owner_id,
        )
        .values(
            status=DeliveryStatus.DELIVERING,
            attempts=WebhookDelivery.attempts + 1,
            lease_expires_at=func.now() + seconds(lease_s),
            enqueued_at=None,
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.event,
            WebhookDelivery.url,
            WebhookDelivery.prediction_id,
            # Once the body is frozen, never read the (possibly large) snapshot again.
            case((WebhookDelivery.body.is_(None), WebhookDelivery.snapshot)).label("snapshot"),
            WebhookDelivery.body,
            WebhookDelivery.attempts,
            WebhookDelivery.created_at,
            Prediction.owner_id,
            User.username,
            Model.name,
        )
    ).one_or_none()
    if row is None:
        return None
    session.add(WebhookAttempt(delivery_id=id, number=row.attempts, started_at=func.now()))
    return Claim(
        row.id,
        row.event,
        row.url,
        row.prediction_id,
        row.snapshot,
        row.body,
        row.attempts,
        row.created_at,
        row.owner_id,
        f"{row.username}/{row.name}",
    )


def freeze_body(session: Session, *, id: str, body: str) -> None:
    """The body every attempt of the delivery sends, set at its first."""
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == id).values(body=body))


def record(
    session: Session,
    *,
    claim: Claim,
    status: DeliveryStatus,
    status_code: int | None,
    latency_ms: float,
    error: str | None,
    retry_in_s: float | None = None,
) -> str | None:
    """Log the attempt's outcome and move the delivery to `status` (PENDING: retried in
    `retry_in_s`), unless its lease lapsed and the attempt was requeued meanwhile (None).
    Returns the status written: a superseded `output` or `logs` is skipped, not retried."""
    session.execute(
        update(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == claim.id, WebhookAttempt.number == claim.attempt)
        .values(status_code=status_code, latency_ms=latency_ms, error=error)
    )
    values: dict[str, Any] = {
        "status": status,
        "lease_expires_at": None,
        "last_status_code": status_code,
        "last_error": error,
    }
    if status == DeliveryStatus.PENDING:
        values["next_attempt_at"] = func.now() + seconds(retry_in_s or 0.0)
    else:
        values["completed_at"] = func.now()
    return session.scalar(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claim.id,
            WebhookDelivery.status == DeliveryStatus.DELIVERING,
            WebhookDelivery.attempts == claim.attempt,
        )
        .values(**values)
        .returning(WebhookDelivery.status)
    )


def requeue_lost(
    session: Session, *, retry_in_s: Callable[[int, datetime], float | None]
) -> list[tuple[str, str]]:
    """Deliveries whose worker died mid-attempt (the lease ran out): back to `pending`, or
    `failed` (predictions.requeue_lost is the same for predictions). The lost attempt counts
    like a failed one: `retry_in_s(attempt, created_at)` (the workers' retry schedule) says
    when the next is due, or None: failed. Never due at once, so a receiver whose answer
    kills the worker is not called again every lease. Returns (event, new status) of each (a
    superseded `output` or `logs` is skipped, not retried)."""
    lost = session.execute(
        select(
            WebhookDelivery.id,
            WebhookDelivery.event,
            WebhookDelivery.attempts,
            WebhookDelivery.created_at,
        )
        .where(
            WebhookDelivery.status == DeliveryStatus.DELIVERING,
            WebhookDelivery.lease_expires_at < func.now(),
        )
        .with_for_update(skip_locked=True)
    ).all()
    requeued = []
    for row in lost:
        wait_s = retry_in_s(row.attempts, row.created_at)
        values: dict[str, Any] = {
            "lease_expires_at": None,
            "last_status_code": None,
            "last_error": LOST,
        }
        if wait_s is None:
            values.update(status=DeliveryStatus.FAILED, completed_at=func.now())
        else:
            values.update(
                status=DeliveryStatus.PENDING, next_attempt_at=func.now() + seconds(wait_s)
            )
        # The row is locked (FOR UPDATE): a late `record` waits, then finds it requeued.
        status = session.scalar(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == row.id)
            .values(values)
            .returning(WebhookDelivery.status)
        )
        session.execute(
            update(WebhookAttempt)
            .where(
                WebhookAttempt.delivery_id == row.id,
                WebhookAttempt.number == row.attempts,
                WebhookAttempt.status_code.is_(None),
                WebhookAttempt.error.is_(None),
            )
            .values(error=LOST)
        )
        requeued.append((row.event, str(status)))
    return requeued


def forget_enqueued(session: Session, *, older_than_s: float) -> int:
    """Pending deliveries published that long ago and never started: their message is taken as
    lost, so they are published again (a duplicate is harmless: the claim is conditional)."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.enqueued_at < func.now() - seconds(older_than_s),
        )
        .values(enqueued_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def take_due(session: Session, *, limit: int) -> list[str]:
    """Due deliveries with no message out, marked as published: publish them after commit.
    Safe with several dispatchers (SKIP LOCKED)."""
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.enqueued_at.is_(None),
            WebhookDelivery.next_attempt_at <= func.now(),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return list(
        session.scalars(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(due))
            .values(enqueued_at=func.now())
            .returning(WebhookDelivery.id)
        )
    )


def mark_not_enqueued(session: Session, *, ids: list[str]) -> None:
    """Publishing failed (Redis down): the dispatcher tries again."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(enqueued_at=None)
    )


def seconds_until_due(session: Session) -> float | None:
    """How long until the next unpublished delivery is due (<= 0: now), None if there is none."""
    next_due = func.min(WebhookDelivery.next_attempt_at)
    value = session.scalar(
        select(func.extract("epoch", next_due - func.now())).where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.enqueued_at.is_(None),
        )
    )
    return None if value is None else float(value)
