"""One run of a model version on one input. Its status only moves forward."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, LargeBinary, String, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, JSONValue
from db.ids import new_id


class PredictionStatus(StrEnum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        PredictionStatus.SUCCEEDED,
        PredictionStatus.FAILED,
        PredictionStatus.CANCELED,
        PredictionStatus.ABORTED,
    }
)


class PredictionSource(StrEnum):
    """Which API created it: Quern's own (Replicate's) or the OpenAI-compatible one."""

    API = "api"
    OPENAI = "openai"


class Prediction(Base):
    __tablename__ = "predictions"
    # Server defaults (created_at, status) come back in the INSERT's RETURNING: no extra SELECT.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012
    __table_args__ = (
        CheckConstraint(
            "status IN ('starting', 'processing', 'succeeded', 'failed', 'canceled', 'aborted')",
            name="status",
        ),
        CheckConstraint("source IN ('api', 'openai')", name="source"),
        # Cursor pages: newest first per owner, ties broken by id.
        Index("ix_predictions_owner_id_created_at_id", "owner_id", "created_at", "id"),
        # Queue depth per version (backpressure): only queued rows, so it stays small.
        Index(
            "ix_predictions_starting_version_id",
            "version_id",
            postgresql_where=text("status = 'starting'"),
        ),
        # Only unfinished predictions: small, for finding stuck work.
        Index(
            "ix_predictions_unfinished",
            "status",
            "created_at",
            postgresql_where=text("status IN ('starting', 'processing')"),
        ),
        # Predictions in flight per user (the per-user limit): only unfinished rows.
        Index(
            "ix_predictions_unfinished_owner_id",
            "owner_id",
            postgresql_where=text("status IN ('starting', 'processing')"),
        ),
        # The result cache's entries: succeeded rows with a key, newest last per key.
        Index(
            "ix_predictions_cache_entries",
            "version_id",
            "cache_key",
            "completed_at",
            postgresql_where=text("status = 'succeeded' AND cache_key IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    input: Mapped[dict[str, Any]]
    output: Mapped[Any | None] = mapped_column(JSONValue)
    logs: Mapped[str] = mapped_column(Text, default="", server_default="")
    error: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PredictionStatus.STARTING)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # predict_time, batch_size: written by the worker.
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    # From `Cancel-After`: not started by then → aborted; running then → canceled.
    deadline: Mapped[datetime | None]
    # Delivery bookkeeping, so PostgreSQL (not Redis) decides what must run again:
    # when a message was last published (NULL: none is known to be queued, e.g. Redis was down),
    # the earliest time a retry may start (backoff), and how long the running worker's lease on
    # a `processing` row lasts (it renews it; a dead worker's lease runs out).
    enqueued_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    # Where to POST the prediction object when it starts, streams output or logs, completes
    # (the events of webhook_events_filter); deliveries are rows of webhook_deliveries.
    webhook: Mapped[str | None] = mapped_column(String(2048))
    webhook_events_filter: Mapped[list[str] | None] = mapped_column(ARRAY(String(16)))
    # The prediction object's `source`: `api`, or `openai` for one made by /openai/v1.
    source: Mapped[str] = mapped_column(
        String(16), default=PredictionSource.API, server_default=PredictionSource.API.value
    )
    # SHA-256 of the validated input in canonical form, when the version caches results and
    # the input is deterministic: once succeeded, the row answers repeats of it.
    cache_key: Mapped[bytes | None] = mapped_column(LargeBinary)
