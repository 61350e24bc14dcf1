"""State changes are conditional: a duplicate delivery or a late writer changes nothing."""

import pytest

from db.repositories import predictions
from db.repositories.predictions import UNFINISHED
from db.seed import seed
from db.session import session_scope
from db.tables import PredictionStatus
from tests.helpers import create_prediction_row


@pytest.fixture
def prediction_id() -> str:
    return create_prediction_row()


def test_second_claim_of_the_same_prediction_is_a_no_op(prediction_id: str) -> None:
    with session_scope() as session:
        first = predictions.claim(session, id=prediction_id)
    with session_scope() as session:
        second = predictions.claim(session, id=prediction_id)
    assert first is not None and first.attempts == 1 and first.input == {"text": "x"}
    assert second is None


def test_terminal_status_never_changes(prediction_id: str) -> None:
    with session_scope() as session:
        predictions.claim(session, id=prediction_id)
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
