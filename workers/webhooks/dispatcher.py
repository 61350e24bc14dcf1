"""The dispatcher: PostgreSQL says which deliveries are due; this makes Redis carry them.

It runs in every webhooks worker. It wakes when a delivery is written or set to be retried
(NOTIFY from migration 0006's trigger, so `start` and `completed` go at once, whoever wrote
them), when the next retry is due (so retries keep to their schedule), and at least every
`webhook_dispatch_interval_s`; then it publishes a message for each due delivery that has
none. Every interval it also takes back deliveries whose worker died mid-attempt (their lease
lapsed) and those whose message seems lost, or all of those waiting if Redis lost its data
(workers/broker_memory.py). Several dispatchers are safe together: a delivery is marked as
published under SKIP LOCKED.

It publishes only `pending` deliveries, and PostgreSQL keeps at most one of each prediction
pending or being sent (migration 0008): the later ones are `waiting`, and become pending (with
a NOTIFY) when the one before ends. So a prediction's deliveries go one at a time, in order,
while different predictions' go in parallel, and deliveries held back behind a dead receiver
are never even looked at here.
"""

import logging
import threading
import time

import redis
from celery import Celery

from common.contract import DELIVER_WEBHOOK_TASK, WEBHOOKS_QUEUE
from common.relay import publish_or_unmark
from db.listener import Listener
from db.repositories import webhook_deliveries
from db.session import session_scope
from workers import broker_memory, metrics
from workers.settings import WorkerSettings
from workers.webhooks import delivery

log = logging.getLogger(__name__)

CHANNEL = "quern_webhook_deliveries"
BATCH = 500


def recover(settings: WorkerSettings, broker: redis.Redis) -> None:
    """Take back attempts lost with their worker, and deliveries whose message was lost."""
    broker_lost = broker_memory.lost(broker, "webhooks")
    with session_scope() as session:
        lost = webhook_deliveries.requeue_lost(
            session,
            retry_in_s=lambda attempt, created_at: delivery.retry_wait(
                attempt, created_at, settings
            ),
        )
        resent = webhook_deliveries.forget_enqueued(
            session, older_than_s=0 if broker_lost else settings.webhook_requeue_after_s
        )
    if broker_lost:
        broker_memory.kept(broker, "webhooks")
    for event, status in lost:
        metrics.count_delivery(event, status)
    if lost or resent:
        log.info(
            "dispatcher: %d attempts lost with their worker, %d messages lost", len(lost), resent
        )


def publish_due(app: Celery, settings: WorkerSettings) -> float | None:
    """Publish every due delivery that has no message. Returns the seconds until the next one
    is due (None: none is waiting). One it cannot publish is left for a later pass
    (common/relay.py)."""

    def send(_: None, ids: list[str]) -> None:
        app.send_task(DELIVER_WEBHOOK_TASK, args=ids, queue=WEBHOOKS_QUEUE)

    def failed(unsent: list[str], _: Exception) -> None:
        log.warning("dispatcher: could not publish %d deliveries; will retry", len(unsent))

    def unmark(unsent: list[str]) -> None:
        with session_scope() as session:
            webhook_deliveries.mark_not_enqueued(session, ids=unsent)

    while True:
        with session_scope() as session:
            due = webhook_deliveries.take_due(session, limit=BATCH)
            # The last pass (the rows just taken are marked, so not counted) asks in passing.
            next_in_s = webhook_deliveries.seconds_until_due(session) if len(due) < BATCH else None
        if publish_or_unmark([(None, [id]) for id in due], send, unmark, failed=failed):
            return settings.webhook_dispatch_interval_s
        if len(due) < BATCH:
            return next_in_s


def run(app: Celery, settings: WorkerSettings, stopping: threading.Event) -> None:
    """Recover and publish as the module says, until `stopping` is set. Each pass runs on a
    LISTENing connection (db/listener.py), so no NOTIFY after it goes unheard; if the
    connection or a pass fails, a new connection's first pass catches up."""
    interval = settings.webhook_dispatch_interval_s
    recovered_at = -interval
    broker = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)

    def one_pass() -> float:
        nonlocal recovered_at
        if time.monotonic() - recovered_at >= interval:
            recover(settings, broker)
            recovered_at = time.monotonic()
        next_due_s = publish_due(app, settings)
        wait_s = interval if next_due_s is None else min(interval, next_due_s)
        return max(wait_s, 0.01)

    listener = Listener("webhook dispatcher", [CHANNEL])
    listener.run(stopping, before_wait=one_pass, stop_after=1)
    broker.close()
