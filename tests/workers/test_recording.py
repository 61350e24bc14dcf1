"""A batch's outcomes written in one statement, fenced by attempt: real rows in PostgreSQL."""

import json

from db.repositories import predictions
from db.repositories.predictions import UNFINISHED, Claim, Fate
from db.session import session_scope
from db.tables import PredictionStatus
from tests.support.helpers import create_prediction_row
from tests.workers.stubs import load
from workers import recording
from workers.events import Event, EventPublisher
from workers.recording import Outcome
from workers.runtime import WorkerRuntime
from workers.settings import get_worker_settings


def claim(*ids: str) -> list[Claim]:
    with session_scope() as session:
        return predictions.claim(session, ids=list(ids), lease_s=60)


def cancel(prediction_id: str) -> None:
    with session_scope() as session:  # what POST /v1/predictions/{id}/cancel does
        predictions.update_status(
            session, id=prediction_id, from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )


def test_every_fate_of_a_batch_is_written_by_one_statement() -> None:
    ids = [create_prediction_row() for _ in range(4)]
    claims = claim(*ids)
    with session_scope() as session:
        applied = predictions.record(
            session,
            fates=[
                Fate(ids[0], 1, "succeeded", "ok\n", output="[1.5]", metrics='{"batch_size": 4}'),
                Fate(ids[1], 1, "failed", "bad\n", error="I refuse"),
                Fate(ids[2], 1, "canceled", "late\n", output='"part"', error="Deadline"),
                Fate(ids[3], 1, "starting", "again\n", retry_in_s=30.0),
            ],
        )
    assert applied == dict.fromkeys(ids, True) and len(claims) == 4
    ok, bad, late, again = map(load, ids)
    assert (ok.status, ok.output, ok.metrics, ok.logs) == (
        "succeeded",
        [1.5],
        {"batch_size": 4},
        "ok\n",
    )
    assert (bad.status, bad.error, bad.output) == ("failed", "I refuse", None)
    assert (late.status, late.output, late.error) == ("canceled", "part", "Deadline")
    for finished in (ok, bad, late):
        assert finished.completed_at is not None and finished.lease_expires_at is None
    assert (again.status, again.enqueued_at, again.completed_at) == ("starting", None, None)
    assert again.next_attempt_at is not None and again.lease_expires_at is None


def test_a_prediction_canceled_meanwhile_keeps_canceled_and_gets_the_logs() -> None:
    canceled, kept = create_prediction_row(), create_prediction_row()
    claim(canceled, kept)
    cancel(canceled)
    with session_scope() as session:
        applied = predictions.record(
            session,
            fates=[
                Fate(canceled, 1, "succeeded", "Predicted\n", output="[1]"),
                Fate(kept, 1, "succeeded", "Predicted\n", output="[2]"),
            ],
        )
    assert applied == {canceled: False, kept: True}
    row = load(canceled)
    assert (row.status, row.output, row.logs) == ("canceled", None, "Predicted\n")
    assert load(kept).output == [2]


def test_a_stale_attempt_writes_nothing() -> None:
    prediction_id = create_prediction_row()
    (first,) = claim(prediction_id)
    with session_scope() as session:  # the sweeper took it back; a second attempt claims it
        predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=(PredictionStatus.PROCESSING,),
            status=PredictionStatus.STARTING,
        )
    (second,) = claim(prediction_id)
    with session_scope() as session:
        stale = Fate(prediction_id, first.attempts, "succeeded", "stale\n", output="[0]")
        assert predictions.record(session, fates=[stale]) == {}
    row = load(prediction_id)
    assert (row.status, row.attempts, row.output, row.logs) == ("processing", 2, None, "")
    assert second.attempts == 2


class Kept(EventPublisher):
    """Keeps what it is given to publish, instead of publishing it."""

    def __init__(self) -> None:
        super().__init__(get_worker_settings().redis_url)
        self.published: list[Event] = []

    def publish_many(self, events: list[Event], ttl_s: int = 0) -> bool:
        self.published.extend(events)
        return True


def test_the_recorder_publishes_output_and_logs_only_for_what_it_wrote(
    runtime: WorkerRuntime,
) -> None:
    written, canceled, stale = (create_prediction_row() for _ in range(3))
    claims = claim(written, canceled, stale)
    cancel(canceled)
    claims[2] = Claim(stale, {}, claims[2].attempts - 1, None, claims[2].owner_id)
    runtime.events = kept = Kept()
    recording.record(runtime, claims, [Outcome(output=[7.0], batch_size=3)] * 3, [], "test/model")
    assert [(id, attempt, event) for id, attempt, event, _ in kept.published] == [
        (written, 1, "output"), (written, 1, "logs"), (canceled, 1, "logs"),
    ]  # fmt: skip
    assert json.loads(kept.published[0][3]) == [7.0] and load(written).output == [7.0]
    assert load(canceled).status == "canceled" and load(stale).status == "processing"
