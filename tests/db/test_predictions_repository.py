"""State changes are conditional: a duplicate delivery or a late writer changes nothing."""

import pytest

from db.repositories import predictions
from db.repositories.predictions import UNFINISHED
from db.seed import seed
from db.session import session_scope
from db.tables import PredictionStatus
from tests.support.helpers import create_prediction_row


@pytest.fixture
def prediction_id() -> str:
    return create_prediction_row()


def test_second_claim_of_the_same_prediction_is_a_no_op(prediction_id: str) -> None:
    with session_scope() as session:
        first = predictions.claim(session, ids=[prediction_id], lease_s=60)
    with session_scope() as session:
        second = predictions.claim(session, ids=[prediction_id], lease_s=60)
    assert [(c.id, c.attempts, c.input) for c in first] == [(prediction_id, 1, {"text": "x"})]
    assert second == []


def test_one_claim_takes_every_startable_prediction_of_a_batch_and_skips_the_rest() -> None:
    ids = [create_prediction_row() for _ in range(3)]
    with session_scope() as session:
        predictions.update_status(
            session, id=ids[1], from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )
    with session_scope() as session:
        claims = predictions.claim(session, ids=[*ids, ids[0]], lease_s=60)
    assert sorted(c.id for c in claims) == sorted([ids[0], ids[2]])


def test_terminal_status_never_changes(prediction_id: str) -> None:
    with session_scope() as session:
        predictions.claim(session, ids=[prediction_id], lease_s=60)
        assert predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=(PredictionStatus.PROCESSING,),
            status=PredictionStatus.SUCCEEDED,
            output=[1.0],
        )
    with session_scope() as session:
        changed = predictions.update_status(
            session, id=prediction_id, from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )
        row = predictions.get(session, id=prediction_id)
    assert not changed
    assert row is not None and row.prediction.status == "succeeded"
    assert row.prediction.output == [1.0] and row.prediction.completed_at is not None


def test_seed_is_idempotent() -> None:
    with session_scope() as session:
        assert seed(session) == []
