"""Webhook deliveries (a transactional outbox) and their attempts.

A delivery is one event of one prediction for its webhook. Its row is written in the
transaction that causes the event (a trigger on status changes, migration 0006), so a crash
can never lose one; its id is the `webhook-id` header, the same on every attempt.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base
from db.ids import new_id


class WebhookEvent(StrEnum):
    """When each event fires (only if the prediction's `webhook_events_filter` names it):

    - `start` and `completed` are written by PostgreSQL, not by Python: the PL/pgSQL function
      `quern_webhook_status_events()` of migration 0006 (migrations/versions/0006_webhooks.py),
      run by the trigger `predictions_webhook_events` on every status change. `start` when
      `starting` becomes `processing` on the first attempt; `completed` when `starting` or
      `processing` becomes `succeeded`, `failed`, `canceled` or `aborted`, whoever wrote it.
    - `output` and `logs` (PROGRESS_EVENTS) are written by the worker running the prediction,
      at most one of each per prediction every EVERY_S (workers/webhooks/progress.py), through
      db/repositories/webhook_deliveries.py.
    - Which written delivery is then sent or skipped is migration 0008's triggers
      (migrations/versions/0008_webhook_delivery_order.py): a later `output` or `logs`, or
      `completed`, supersedes an unsent `output` or `logs`.
    """

    START = "start"
    OUTPUT = "output"
    LOGS = "logs"
    COMPLETED = "completed"


# Every event, in the order they happen: the filter when a create names none.
ALL_EVENTS = tuple(WebhookEvent)
# Written by the worker as the prediction runs; the others by the status trigger (above).
PROGRESS_EVENTS = (WebhookEvent.OUTPUT, WebhookEvent.LOGS)


class DeliveryStatus(StrEnum):
    """At most one delivery of a prediction is pending or delivering at a time; the later ones
    wait for it to end (migration 0008's triggers)."""

    WAITING = "waiting"  # for an earlier delivery of its prediction to end
    PENDING = "pending"  # waiting for its (next) attempt at next_attempt_at
    DELIVERING = "delivering"  # a worker holds it until lease_expires_at
    SUCCEEDED = "succeeded"  # the receiver answered 2xx
    FAILED = "failed"  # out of attempts (or past the retry horizon)
    STOPPED = "stopped"  # the receiver answered 410 Gone: never retried
    SKIPPED = "skipped"  # an `output` or `logs` a later event supersedes: not sent (again)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    # Server defaults (status, next_attempt_at, created_at) come back in the INSERT's RETURNING.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012
    __table_args__ = (
        CheckConstraint("event IN ('start', 'output', 'logs', 'completed')", name="event"),
        CheckConstraint(
            "status IN ('pending', 'delivering', 'succeeded', 'failed', 'stopped', 'waiting', "
            "'skipped')",
            name="status",
        ),
        Index("ix_webhook_deliveries_prediction_id_created_at", "prediction_id", "created_at"),
        # What the dispatcher publishes on every wake-up: due and not yet sent (tiny).
        Index(
            "ix_webhook_deliveries_unsent",
            "next_attempt_at",
            postgresql_where=text("status = 'pending' AND enqueued_at IS NULL"),
        ),
        # Where it looks for lost attempts and lost messages now and then: unfinished rows.
        Index(
            "ix_webhook_deliveries_unfinished",
            "status",
            postgresql_where=text("status IN ('pending', 'delivering')"),
        ),
        # A prediction's unfinished deliveries in the order written, for migration 0008's
        # triggers: is one on (then a new one waits), which waiting one is next.
        Index(
            "ix_webhook_deliveries_unfinished_prediction_id",
            "prediction_id",
            "created_at",
            "id",
            postgresql_where=text("status IN ('waiting', 'pending', 'delivering')"),
        ),
    )

    # The trigger of migration 0006 makes ids with quern_new_id(), the same shape as new_id().
    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(2048))
    # The prediction row at event time (PostgreSQL's to_jsonb; `output` so far for streamed
    # output), and the body built from it at the first attempt: every retry sends these bytes.
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONB)
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(
        String(16), default=DeliveryStatus.PENDING, server_default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # When the dispatcher last published a message for it (NULL: none is queued).
    enqueued_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # The delivery this one sends again (POST .../webhooks/redeliver).
    redelivery_of: Mapped[str | None] = mapped_column(String(26))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    completed_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One try of a delivery: when, what the receiver answered (or why there was no answer)."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime]
    status_code: Mapped[int | None]
    latency_ms: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
