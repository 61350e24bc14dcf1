"""Webhook deliveries as their owner sees them, and the signing secret."""

from datetime import datetime

from pydantic import Field

from api.schemas.base import ResponseBody


class WebhookAttemptOut(ResponseBody):
    number: int
    started_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status, if it answered.")
    latency_ms: float | None = Field(description="Until the answer (or the error); null while on.")
    error: str | None = Field(description="Why the attempt failed: the answer, or no answer.")


class WebhookDeliveryOut(ResponseBody):
    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    event: str = Field(description="`start`, `output`, `logs` or `completed`.")
    url: str
    status: str = Field(
        description="`waiting` (behind an earlier delivery of the same prediction: they go one "
        "at a time, in order), `pending` (next attempt at `next_attempt_at`), `delivering`, "
        "`succeeded` (2xx), `failed` (out of attempts), `stopped` (the receiver answered 410) or "
        "`skipped` (an `output` or `logs` event superseded by a later one before it was sent)."
    )
    created_at: datetime
    next_attempt_at: datetime
    completed_at: datetime | None
    redelivery_of: str | None = Field(description="The delivery this one sends again, if any.")
    attempts: list[WebhookAttemptOut]


class WebhookDeliveryList(ResponseBody):
    results: list[WebhookDeliveryOut]


class WebhookSecretOut(ResponseBody):
    key: str = Field(description="`whsec_...`: verifies every delivery's `webhook-signature`.")
