"""Delivering one webhook: claim the row, send, record the attempt and what happens next.

No database connection is held while the receiver is being called. The outcome: 2xx
succeeded; 410 stopped (never retried); anything else, or no answer, is retried later with
exponential backoff and jitter (a 429's or 503's Retry-After may lengthen the wait), until the
attempts or the horizon run out (failed). Retries wait in PostgreSQL (`next_attempt_at`),
never in a Redis ETA message; the dispatcher publishes them when due. An `output` or `logs`
that a later event of its prediction supersedes is skipped instead of retried (migration 0008),
and the prediction's next delivery, which waited for this one, goes.
"""

import logging
from datetime import UTC, datetime

from common import backoff, log_format
from common.prediction_object import from_snapshot, prediction_object, to_json
from db.repositories import webhook_deliveries, webhook_secrets
from db.repositories.webhook_deliveries import Claim
from db.session import session_scope
from db.tables import DeliveryStatus
from workers import metrics
from workers.settings import WorkerSettings, get_worker_settings
from workers.webhooks import sending

log = logging.getLogger(__name__)

# Of the backoff ceiling, the part every retry waits at least (common/backoff.py).
LEAST = 0.75


def deliver(delivery_id: str) -> None:
    settings = get_worker_settings()
    with session_scope() as session:
        claim = webhook_deliveries.claim(session, id=delivery_id, lease_s=settings.webhook_lease_s)
        if claim is None:
            log.info("webhook delivery %s is not due or not pending; message ignored", delivery_id)
            return
        body = claim.body
        if body is None:
            assert claim.snapshot is not None
            prediction = from_snapshot(claim.snapshot)
            body = to_json(prediction_object(prediction, claim.model, settings.public_url))
            webhook_deliveries.freeze_body(session, id=claim.id, body=body)
        secret = webhook_secrets.get_or_create(session, owner_id=claim.owner_id)
    with log_format.log_context(prediction_id=claim.prediction_id):
        _attempt(claim, body, secret, settings)


def _attempt(claim: Claim, body: str, secret: str, settings: WorkerSettings) -> None:
    """Send once, record what came of it."""
    headers = sending.signed_headers(secret, claim.id, body)
    result = sending.send(claim.url, body, headers, settings.webhook_timeout_s)
    status, retry_in_s = next_step(claim, result, settings)
    with session_scope() as session:
        recorded = webhook_deliveries.record(
            session,
            claim=claim,
            status=status,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            retry_in_s=retry_in_s,
        )
    if recorded is not None:  # else the dispatcher took the attempt back as lost, and counted it
        metrics.count_delivery(claim.event, recorded)
    metrics.WEBHOOK_SECONDS.labels(claim.event).observe(result.latency_ms / 1000)
    retried = recorded == DeliveryStatus.PENDING
    log.info(
        "webhook %s %s attempt %d: %s (%s)%s",
        claim.event,
        claim.id,
        claim.attempt,
        result.error or f"HTTP {result.status_code}",
        "retried" if retried else recorded or "taken back as lost",
        f", next in {retry_in_s:.2f}s" if retried and retry_in_s is not None else "",
    )


def next_step(
    claim: Claim, result: sending.Result, settings: WorkerSettings
) -> tuple[DeliveryStatus, float | None]:
    """The delivery's status after this attempt, and for a retry, the wait before the next."""
    if result.succeeded:
        return DeliveryStatus.SUCCEEDED, None
    if result.status_code == 410:
        return DeliveryStatus.STOPPED, None
    wait_s = retry_wait(claim.attempt, claim.created_at, settings, result.retry_after_s)
    if wait_s is None:
        return DeliveryStatus.FAILED, None
    return DeliveryStatus.PENDING, wait_s


def retry_wait(
    attempt: int, created_at: datetime, settings: WorkerSettings, retry_after_s: float | None = None
) -> float | None:
    """The wait after failed attempt `attempt` of a delivery created at `created_at`, or None
    if it may have no other (out of attempts, or past the horizon). The one retry schedule: the
    dispatcher uses it too, for an attempt lost with its worker.

    Retry-After only lengthens the backoff, up to the cap: were it to replace it, a receiver
    answering `Retry-After: 0` would use up every attempt within seconds."""
    horizon_left_s = (
        settings.webhook_retry_horizon_s - (datetime.now(UTC) - created_at).total_seconds()
    )
    if attempt >= settings.webhook_max_attempts or horizon_left_s <= 0:
        return None
    cap_s = settings.webhook_retry_cap_s
    wait_s = retry_delay(attempt, settings.webhook_retry_base_s, cap_s)
    if retry_after_s is not None:
        wait_s = min(cap_s, max(retry_after_s, wait_s))
    return min(wait_s, horizon_left_s)


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Uniform in [3c/4, c], c = min(cap, base * 2^(attempt-1)) (common/backoff.py): the jitter
    spreads the retries of many deliveries, yet (below the cap) each wait is clearly longer than
    the last, which full jitter (uniform in [0, c]) cannot promise."""
    return backoff.retry_delay(attempt, base_s, cap_s, least=LEAST)
