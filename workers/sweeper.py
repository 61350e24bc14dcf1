"""The sweeper: PostgreSQL says what must run; this makes Redis carry it.

Every worker process runs one, but a transaction-scoped advisory lock lets only one sweep at
a time. A sweep: fails or re-queues predictions whose worker died (lease ran out), and
releases the queued ones a dead worker had received but not started (their lease ran out, or
its message was never acknowledged and they never got one: workers/orphans.py); aborts queued
ones past their deadline, forgets idempotency keys older than 24 h, removes expired uploads
(up to 500 a sweep), and publishes a message for
the queued predictions that have none (Redis was down at create time, a retry delay is over,
a worker died holding them, Redis lost its data (workers/broker_memory.py), or the message
was lost): one per version, up to MAX_IDS_PER_MESSAGE ids each.
"""

import contextlib
import logging
import threading
from functools import partial

import redis
from celery import Celery
from sqlalchemy import func, select

from common.contract import prediction_messages, send_predictions
from common.relay import publish_or_unmark
from db.repositories import files, idempotency_keys, predictions
from db.session import session_scope
from workers import broker_memory, orphans
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)

SWEEP_LOCK = 0x71_75_65_72_6E  # "quern": one sweeper at a time across every worker
BATCH = 500


def sweep(app: Celery, settings: WorkerSettings, broker: redis.Redis) -> int:
    """One sweep. Returns how many messages it published."""
    try:
        delivered = orphans.delivered_before(broker, settings.lease_s)
    except redis.RedisError:
        delivered = []  # the broker is down: nothing can be published either, for now
    in_messages = [id for message in delivered for id in message.prediction_ids]
    held: set[str] = set()
    broker_lost = broker_memory.lost(broker, "predictions")
    with session_scope() as session:
        if not session.scalar(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK))):
            return 0  # another worker is sweeping
        lost = predictions.requeue_lost(
            session,
            max_attempts=settings.max_attempts,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
        )
        orphaned = predictions.release_held_lost(session)
        if in_messages:
            orphaned += predictions.release_orphans(
                session, ids=in_messages, older_than_s=settings.lease_s
            )
            held = predictions.held(session, ids=in_messages)
        if broker_lost:  # every queued prediction's message may be gone
            resent = predictions.forget_enqueued(session)
            if resent:  # a new Redis (a first start) with nothing waiting has lost nothing
                log.warning("sweeper: Redis lost its messages; sending %d queued again", resent)
        aborted = predictions.abort_expired(session)
        idempotency_keys.delete_expired(session)
        files.delete_expired(session)
        due = predictions.take_due(session, requeue_after_s=settings.requeue_after_s, limit=BATCH)
    if broker_lost:
        broker_memory.kept(broker, "predictions")
    if lost or orphaned or aborted:
        log.info(
            "sweeper: %d lost with their worker, %d received by a worker that died before "
            "starting them, %d past their deadline",
            len(lost), len(set(orphaned)), len(aborted),
        )  # fmt: skip
    # Messages no live worker holds anything of: done with, or sent again just below.
    done_with = [m.tag for m in delivered if held.isdisjoint(m.prediction_ids)]
    with contextlib.suppress(redis.RedisError):  # if not now, the next sweep finds them again
        orphans.forget(broker, done_with)
    messages = prediction_messages((item.id, item.version_id, item.hardware) for item in due)

    def failed(unsent: list[str], _: Exception) -> None:
        log.warning("sweeper: could not publish %d predictions; will try again", len(unsent))

    def unmark(unsent: list[str]) -> None:
        with session_scope() as session:
            predictions.mark_not_enqueued(session, ids=unsent)

    unsent = publish_or_unmark(messages, partial(send_predictions, app), unmark, failed=failed)
    return len(due) - len(unsent)


def run(app: Celery, settings: WorkerSettings, stopping: threading.Event) -> None:
    """Sweep every sweep_interval_s until `stopping` is set."""
    broker = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    while not stopping.is_set():
        try:
            sent = sweep(app, settings, broker)
            if sent:
                log.info("sweeper: published %d queued predictions", sent)
        except Exception:
            log.warning("sweep failed; trying again", exc_info=True)
        stopping.wait(settings.sweep_interval_s)
    broker.close()
