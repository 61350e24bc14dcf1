"""Committed terminal statuses are announced with NOTIFY (what waiting clients listen to)."""

import psycopg

from db.repositories import predictions
from db.repositories.predictions import STATUS_CHANNEL, UNFINISHED
from db.session import session_scope
from db.tables import PredictionStatus
from tests.conftest import DATABASE_URL
from tests.support.helpers import create_prediction_row


def test_each_committed_terminal_status_is_notified_once_with_id_and_status() -> None:
    prediction_id = create_prediction_row()
    url = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {STATUS_CHANNEL}")
        with session_scope() as session:
            predictions.claim(session, ids=[prediction_id], lease_s=60)  # processing: silent
        try:
            with session_scope() as session:  # rolled back: never announced
                predictions.update_status(
                    session,
                    id=prediction_id,
                    from_statuses=UNFINISHED,
                    status=PredictionStatus.FAILED,
                )
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        with session_scope() as session:
            predictions.update_status(
                session,
                id=prediction_id,
                from_statuses=UNFINISHED,
                status=PredictionStatus.CANCELED,
            )
            predictions.update_status(  # not a change: terminal is final
                session, id=prediction_id, from_statuses=UNFINISHED, status=PredictionStatus.FAILED
            )
        # Every change is committed by now, so its notice is already on the way: half a second
        # is enough to hear a second one, were there any.
        heard = [n.payload for n in listener.notifies(timeout=0.5) if prediction_id in n.payload]
    assert heard == [f"{prediction_id} canceled"]
