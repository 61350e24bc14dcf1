"""Webhook deliveries are written in the transaction of the status change that causes them
(migration 0006's trigger), on every path to a final status, and move only forward."""

import time
from datetime import UTC, datetime, timedelta

import psycopg
import redis
from sqlalchemy import func, select

from db.prediction_object import from_snapshot, prediction_object, to_json
from db.repositories import predictions, users, webhook_deliveries
from db.repositories.predictions import UNFINISHED
from db.session import session_scope
from db.settings import get_database_settings
from db.tables import DeliveryStatus, Prediction, PredictionStatus, WebhookDelivery
from tests.helpers import create_version, new_username
from workers.settings import get_worker_settings
from workers.webhooks import dispatcher

HOOK = "https://hooks.example/quern"
ALL = ["start", "output", "logs", "completed"]


def create(events: list[str] | None = ALL, deadline: datetime | None = None) -> str:
    """A `starting` prediction of a new user, with a webhook unless `events` is None."""
    version_id = create_version(max_batch_size=1, max_batch_wait_ms=0)
    with session_scope() as session:
        owner = users.create(session, username=new_username(), password_hash=None)
        return predictions.create(
            session,
            owner_id=owner.id,
            version_id=version_id,
            input={"text": "x"},
            deadline=deadline,
            webhook=None if events is None else HOOK,
            webhook_events_filter=events,
        ).id


def deliveries(prediction_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.prediction_id == prediction_id)
                .order_by(WebhookDelivery.created_at)
            )
        )


def finish(prediction_id: str, status: PredictionStatus, **values: object) -> None:
    with session_scope() as session:
        assert predictions.update_status(
            session, id=prediction_id, from_statuses=UNFINISHED, status=status, **values
        )


def test_start_on_the_first_claim_only_and_completed_with_the_row_at_event_time() -> None:
    prediction_id = create()
    with session_scope() as session:
        (claim,) = predictions.claim(session, ids=[prediction_id], lease_s=60)
        fate = predictions.Fate(claim.id, claim.attempts, PredictionStatus.STARTING, "retrying\n")
        predictions.record(session, fates=[fate])
    with session_scope() as session:  # the second attempt has started before: no second start
        predictions.claim(session, ids=[prediction_id], lease_s=60)
    finish(prediction_id, PredictionStatus.SUCCEEDED, output=[1.0, 2.5])
    start, completed = deliveries(prediction_id)
    assert (start.event, start.url, start.status, start.attempts) == ("start", HOOK, "pending", 0)
    assert start.snapshot["status"] == "processing" and start.snapshot["output"] is None
    assert completed.event == "completed" and completed.snapshot["output"] == [1.0, 2.5]
    assert start.id != completed.id and len(start.id) == 26 and start.id.isalnum()


def test_the_body_built_from_a_snapshot_is_the_prediction_object_of_the_row() -> None:
    prediction_id = create(["completed"])
    finish(prediction_id, PredictionStatus.FAILED, error="boom", metrics={"predict_time": 0.5})
    (completed,) = deliveries(prediction_id)
    with session_scope() as session:
        row = predictions.get(session, id=prediction_id)
        assert row is not None
        expected = to_json(prediction_object(row.prediction, row.model, "http://api"))
        body = to_json(
            prediction_object(from_snapshot(completed.snapshot), row.model, "http://api")
        )
    assert body == expected
    assert '"webhook_events_filter":["completed"]' in body and '"status":"failed"' in body


def test_every_path_to_a_final_status_writes_one_completed_delivery() -> None:
    canceled, aborted, lost = create(), create(deadline=datetime.now(UTC) - timedelta(1)), create()
    with session_scope() as session:  # the API's cancel: scoped to the owner
        owner_id = session.get_one(Prediction, canceled).owner_id
        predictions.update_status(
            session,
            id=canceled,
            owner_id=owner_id,
            from_statuses=UNFINISHED,
            status=PredictionStatus.CANCELED,
        )
        assert predictions.abort_expired(session, ids=[aborted]) == [aborted]  # the sweeper
        predictions.claim(session, ids=[lost], lease_s=0.01)
    time.sleep(0.05)
    with session_scope() as session:  # the sweeper, for a worker lost on the last attempt
        predictions.requeue_lost(session, max_attempts=1, base_s=1, cap_s=1)
    for prediction_id, status in ((canceled, "canceled"), (aborted, "aborted"), (lost, "failed")):
        events = [(d.event, d.snapshot["status"]) for d in deliveries(prediction_id)]
        expected = [("completed", status)]
        assert events == (
            expected if prediction_id != lost else [("start", "processing"), *expected]
        )


def test_only_the_filtered_events_and_nothing_without_a_webhook() -> None:
    only_completed, no_webhook = create(["completed"]), create(None)
    for prediction_id in (only_completed, no_webhook):
        with session_scope() as session:
            predictions.claim(session, ids=[prediction_id], lease_s=60)
        finish(prediction_id, PredictionStatus.SUCCEEDED, output="ok")
    assert [d.event for d in deliveries(only_completed)] == ["completed"]
    assert deliveries(no_webhook) == []


def test_new_deliveries_are_notified_once_per_transaction_and_never_when_rolled_back() -> None:
    first, second, rolled_back = create(), create(), create()
    url = get_database_settings().libpq_url
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN quern_webhook_deliveries")
        with session_scope() as session:
            predictions.claim(session, ids=[first, second], lease_s=60)
        try:
            with session_scope() as session:
                predictions.claim(session, ids=[rolled_back], lease_s=60)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        heard = list(listener.notifies(timeout=1))
    assert len(heard) == 1
    assert len(deliveries(first)) == len(deliveries(second)) == 1 and deliveries(rolled_back) == []


def test_a_delivery_is_claimed_once_and_a_lapsed_lease_gives_it_back_with_the_attempt_lost() -> (
    None
):
    prediction_id = create(["completed"])
    finish(prediction_id, PredictionStatus.SUCCEEDED, output="ok")
    (delivery,) = deliveries(prediction_id)
    with session_scope() as session:
        assert delivery.id in webhook_deliveries.take_due(session, limit=1000)
        claim = webhook_deliveries.claim(session, id=delivery.id, lease_s=0.05)
        assert claim is not None and claim.attempt == 1 and claim.model.startswith("quern/")
        assert webhook_deliveries.claim(session, id=delivery.id, lease_s=60) is None  # a duplicate
    time.sleep(0.1)
    with session_scope() as session:
        assert ("completed", "pending") in webhook_deliveries.take_back_lost(
            session, retry_in_s=lambda attempt, created_at: 0.0
        )
    with session_scope() as session:  # the lost worker comes back: its outcome changes nothing
        assert not webhook_deliveries.record_attempt(
            session,
            claim=claim,
            status=DeliveryStatus.SUCCEEDED,
            status_code=200,
            latency_ms=1.0,
            error=None,
        )
    with session_scope() as session:
        (log,) = webhook_deliveries.list_for_prediction(
            session, prediction_id=prediction_id, limit=10
        )
    assert log.delivery.status == "pending" and log.delivery.attempts == 1
    assert [(a.number, a.status_code) for a in log.attempts] == [(1, 200)]  # what really happened


def test_a_lost_attempt_counts_and_waits_out_the_usual_backoff() -> None:
    """Taken back by the dispatcher, a lost attempt is retried after the schedule's backoff,
    never at once (a receiver whose answer kills the worker would be called every lease), and
    the last one fails the delivery."""
    settings = get_worker_settings().model_copy(
        update={"webhook_retry_base_s": 60.0, "webhook_max_attempts": 2}
    )
    prediction_id = create(["completed"])
    finish(prediction_id, PredictionStatus.SUCCEEDED, output="ok")
    (delivery,) = deliveries(prediction_id)

    def lose_an_attempt(number: int) -> None:
        with session_scope() as session:
            claim = webhook_deliveries.claim(session, id=delivery.id, lease_s=0.05)
            assert claim is not None and claim.attempt == number
        time.sleep(0.1)
        with redis.Redis.from_url(settings.redis_url) as broker:
            dispatcher.recover(settings, broker)

    lose_an_attempt(1)
    with session_scope() as session:
        row = session.get_one(WebhookDelivery, delivery.id)
        wait_s = session.scalar(select(func.extract("epoch", row.next_attempt_at - func.now())))
        assert (row.status, row.last_error) == ("pending", webhook_deliveries.LOST)
        assert 44 <= float(wait_s) <= 60  # retry_delay(1, 60 s): between 45 and 60 s
        assert webhook_deliveries.claim(session, id=delivery.id, lease_s=60) is None  # not due
        row.next_attempt_at = func.now()  # the backoff has passed
    lose_an_attempt(2)
    with session_scope() as session:
        row = session.get_one(WebhookDelivery, delivery.id)
        assert (row.status, row.attempts, row.completed_at is not None) == ("failed", 2, True)
