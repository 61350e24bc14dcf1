"""Webhook deliveries are written in the transaction of the status change that causes them
(migration 0006's trigger), on every path to a final status, and move only forward."""

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from sqlalchemy import func, select, update

from common.prediction_object import from_snapshot, prediction_object, to_json
from db.repositories import predictions, users, webhook_deliveries
from db.repositories.predictions import UNFINISHED
from db.repositories.webhook_deliveries import Claim
from db.session import session_scope
from db.settings import get_database_settings
from db.tables import (
    DeliveryStatus,
    Prediction,
    PredictionStatus,
    WebhookDelivery,
    WebhookEvent,
)
from tests.support.helpers import create_version, new_username
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
        assert ("completed", "pending") in webhook_deliveries.requeue_lost(
            session, retry_in_s=lambda attempt, created_at: 0.0
        )
    with session_scope() as session:  # the lost worker comes back: its outcome changes nothing
        assert not webhook_deliveries.record(
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


def take_due() -> set[str]:
    """What the dispatcher would publish now (of every test's deliveries)."""
    with session_scope() as session:
        return set(webhook_deliveries.take_due(session, limit=10_000))


@pytest.fixture
def only_its_own(rolled_back: object) -> None:
    """The test's deliveries alone are due: what earlier tests left due is marked published,
    in the test's transaction only (tests/support/transaction.py), so take_due() is exact."""
    take_due()


def claim(delivery_id: str) -> Claim:
    """A worker takes the published delivery for an attempt."""
    with session_scope() as session:
        taken = webhook_deliveries.claim(session, id=delivery_id, lease_s=60)
    assert taken is not None
    return taken


def record(taken: Claim, status: DeliveryStatus, retry_in_s: float | None = None) -> str | None:
    """The outcome of the attempt; returns the status written."""
    with session_scope() as session:
        return webhook_deliveries.record(
            session,
            claim=taken,
            status=status,
            status_code=200 if status == DeliveryStatus.SUCCEEDED else 500,
            latency_ms=1.0,
            error=None,
            retry_in_s=retry_in_s,
        )


def attempt(delivery_id: str, status: DeliveryStatus, retry_in_s: float | None = None) -> None:
    assert record(claim(delivery_id), status, retry_in_s) == status


def run(prediction_id: str) -> None:
    with session_scope() as session:
        predictions.claim(session, ids=[prediction_id], lease_s=60)


def stream(prediction_id: str, output: str) -> str:
    with session_scope() as session:
        delivery_id = webhook_deliveries.add_streamed_output(
            session, prediction_id=prediction_id, attempt=1, output=output
        )
    assert delivery_id is not None
    return delivery_id


def status_of(*delivery_ids: str) -> list[str]:
    with session_scope() as session:
        return [session.get_one(WebhookDelivery, id).status for id in delivery_ids]


def the(prediction_id: str, event: str) -> str:
    (delivery_id,) = [d.id for d in deliveries(prediction_id) if d.event == event]
    return delivery_id


@pytest.mark.usefixtures("only_its_own")
def test_a_predictions_next_delivery_waits_until_the_one_before_ends() -> None:
    """One at a time, in the order written, whatever holds the one before (a message out, an
    attempt on); another prediction's deliveries go meanwhile."""
    streamed, other = create(), create(["completed"])
    run(streamed)
    start, output = the(streamed, "start"), stream(streamed, "Once")
    finish(other, PredictionStatus.SUCCEEDED, output="ok")
    assert status_of(start, output) == ["pending", "waiting"]
    assert take_due() == {start, the(other, "completed")}
    taken = claim(start)
    assert take_due() == set()
    record(taken, DeliveryStatus.SUCCEEDED)
    assert status_of(output) == ["pending"] and take_due() == {output}
    taken = claim(output)
    finish(streamed, PredictionStatus.SUCCEEDED, output="Once upon a time")
    completed = the(streamed, "completed")
    assert status_of(output, completed) == ["delivering", "waiting"]  # never overtaken
    assert take_due() == set()
    record(taken, DeliveryStatus.SUCCEEDED)
    assert take_due() == {completed}


@pytest.mark.usefixtures("only_its_own")
def test_a_delivery_waiting_for_its_retry_holds_back_the_next_until_it_ends() -> None:
    prediction_id = create(["start", "completed"])
    run(prediction_id)
    finish(prediction_id, PredictionStatus.SUCCEEDED, output="ok")
    start, completed = the(prediction_id, "start"), the(prediction_id, "completed")
    assert take_due() == {start}
    attempt(start, DeliveryStatus.PENDING, retry_in_s=60)
    assert status_of(start, completed) == ["pending", "waiting"]
    assert take_due() == set()
    with session_scope() as session:  # the dispatcher sleeps until a due one, never 0 s
        wait_s = webhook_deliveries.seconds_until_due(session)
    assert wait_s is not None and 0 < wait_s <= 60  # start's retry, or another test's sooner
    with session_scope() as session:
        session.get_one(WebhookDelivery, start).next_attempt_at = func.now()  # the backoff ends
    assert take_due() == {start}
    attempt(start, DeliveryStatus.FAILED)  # out of attempts: the next goes all the same
    assert take_due() == {completed}


@pytest.mark.usefixtures("only_its_own")
def test_superseded_progress_deliveries_are_skipped_never_start_or_completed() -> None:
    prediction_id = create()
    run(prediction_id)
    start = the(prediction_id, "start")
    first, second = stream(prediction_id, "O"), stream(prediction_id, "Once")
    assert status_of(start, first, second) == ["pending", "skipped", "waiting"]
    # The final transaction writes `completed`, then the last `logs` (workers/recording.py).
    with session_scope() as session:
        assert predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=UNFINISHED,
            status=PredictionStatus.SUCCEEDED,
            output="Once upon a time",
        )
        logs = webhook_deliveries.add_recorded(
            session, prediction_id=prediction_id, event=WebhookEvent.LOGS
        )
    assert logs is not None
    completed = the(prediction_id, "completed")
    assert status_of(start, second, completed, logs) == ["pending", "skipped", "waiting", "skipped"]
    attempt(start, DeliveryStatus.SUCCEEDED)
    assert take_due() == {completed}
    with session_scope() as session:
        row = session.get_one(WebhookDelivery, second)
        assert (row.last_error, row.attempts) == (webhook_deliveries.SUPERSEDED, 0)
        assert row.completed_at is not None


def test_a_superseded_progress_delivery_that_fails_is_skipped_not_retried() -> None:
    prediction_id = create(["output", "completed"])
    run(prediction_id)
    first = stream(prediction_id, "O")
    taken = claim(first)
    second = stream(prediction_id, "Once")  # an attempt of `first` is on: it waits
    assert status_of(first, second) == ["delivering", "waiting"]
    assert record(taken, DeliveryStatus.PENDING, retry_in_s=60) == DeliveryStatus.SKIPPED
    assert status_of(first, second) == ["skipped", "pending"]


@pytest.mark.usefixtures("only_its_own")
def test_without_completed_the_last_progress_delivery_is_sent() -> None:
    """Only `completed` supersedes every progress delivery: a webhook that does not want it
    still gets the last `output`, written with the final status."""
    prediction_id = create(["output"])
    run(prediction_id)
    streamed = stream(prediction_id, "O")
    with session_scope() as session:
        assert predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=UNFINISHED,
            status=PredictionStatus.SUCCEEDED,
            output="Once",
        )
        last = webhook_deliveries.add_recorded(
            session, prediction_id=prediction_id, event=WebhookEvent.OUTPUT
        )
    assert last is not None and take_due() == {last}
    assert status_of(streamed, last) == ["skipped", "pending"]


def test_the_end_of_a_delivery_wakes_the_dispatcher_only_when_another_waits() -> None:
    waiting, alone = create(["start", "completed"]), create(["completed"])
    run(waiting)
    finish(waiting, PredictionStatus.SUCCEEDED, output="ok")
    finish(alone, PredictionStatus.SUCCEEDED, output="ok")
    start, only = the(waiting, "start"), the(alone, "completed")
    assert {start, only} <= take_due()
    with psycopg.connect(get_database_settings().libpq_url, autocommit=True) as listener:
        listener.execute("LISTEN quern_webhook_deliveries")
        attempt(only, DeliveryStatus.SUCCEEDED)
        assert list(listener.notifies(timeout=0.3)) == []
        attempt(start, DeliveryStatus.STOPPED)
        assert len(list(listener.notifies(timeout=1, stop_after=1))) == 1
    assert status_of(the(waiting, "completed")) == ["pending"]


def in_thread(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_a_delivery_ending_while_the_next_is_written_leaves_nothing_waiting() -> None:
    """Each order of the two transactions: the later one waits for the earlier (a lock per
    prediction), so the next is never left `waiting` with nothing before it."""
    for written_first in (True, False):
        prediction_id = create(["start", "completed"])
        run(prediction_id)
        start = the(prediction_id, "start")
        taken = claim(start)

        def end() -> None:
            record(taken, DeliveryStatus.SUCCEEDED)  # noqa: B023

        if written_first:  # the final transaction is open while `start` is answered
            with session_scope() as session:
                assert predictions.update_status(
                    session,
                    id=prediction_id,
                    from_statuses=UNFINISHED,
                    status=PredictionStatus.SUCCEEDED,
                )
                ender = in_thread(end)
                time.sleep(0.3)
                assert ender.is_alive()  # waits for the final transaction
            ender.join(5)
        else:  # `start`'s outcome is being recorded while the prediction completes
            with session_scope() as session:
                session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == start)
                    .values(status=DeliveryStatus.SUCCEEDED)
                )
                writer = in_thread(lambda: finish(prediction_id, PredictionStatus.SUCCEEDED))  # noqa: B023
                time.sleep(0.3)
                assert writer.is_alive()
            writer.join(5)
        assert status_of(start, the(prediction_id, "completed")) == ["succeeded", "pending"]


def test_a_streamed_output_that_raced_the_final_transaction_is_skipped() -> None:
    """Its snapshot was read while the prediction ran; it is written once it has ended (the
    worker's output thread and its final transaction). Even without `completed`, the final
    `logs` is the last word."""
    prediction_id = create(["output", "logs"])
    run(prediction_id)
    with session_scope() as session:
        assert predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=UNFINISHED,
            status=PredictionStatus.SUCCEEDED,
            output="Once upon a time",
        )
        logs = webhook_deliveries.add_recorded(
            session, prediction_id=prediction_id, event=WebhookEvent.LOGS
        )
    with session_scope() as session:
        late = WebhookDelivery(
            prediction_id=prediction_id,
            event=WebhookEvent.OUTPUT,
            url=HOOK,
            snapshot={"status": "processing", "output": "Once"},
        )
        session.add(late)
        session.flush()
        late_id = late.id
    assert logs is not None
    assert status_of(logs, late_id) == ["pending", "skipped"]


@pytest.mark.usefixtures("only_its_own")
def test_a_redelivery_waits_for_the_unfinished_delivery_before_it() -> None:
    prediction_id = create(["completed"])
    finish(prediction_id, PredictionStatus.SUCCEEDED, output="ok")
    completed = the(prediction_id, "completed")
    with session_scope() as session:
        copy = webhook_deliveries.redeliver(session, prediction_id=prediction_id)
        assert copy is not None and copy.status == "waiting"
        copy_id = copy.id
    assert take_due() == {completed} and take_due() == set()
    attempt(completed, DeliveryStatus.PENDING, retry_in_s=60)
    assert status_of(copy_id) == ["waiting"]
    with session_scope() as session:
        session.get_one(WebhookDelivery, completed).next_attempt_at = func.now()
    attempt(completed, DeliveryStatus.SUCCEEDED)
    assert take_due() == {copy_id}
