"""Idempotency keys expire after 24 hours: looked up no longer, then deleted by the sweeper."""

import pytest
from sqlalchemy import delete, text, update

from db.repositories import idempotency_keys
from db.session import session_scope
from db.tables import IdempotencyKey, Prediction
from tests.support.helpers import create_prediction_row


@pytest.mark.usefixtures("rolled_back")
def test_only_keys_older_than_24_hours_are_forgotten_and_deleted() -> None:
    prediction_id = create_prediction_row()
    with session_scope() as session:
        session.execute(delete(IdempotencyKey))  # other tests' keys, in this transaction only
        owner_id = session.get(Prediction, prediction_id).owner_id  # type: ignore[union-attr]
        for key in ("old", "new"):
            idempotency_keys.put(
                session, owner_id=owner_id, key=key, request_hash="h", prediction_id=prediction_id
            )
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "old")
            .values(created_at=text("now() - interval '24 hours 1 second'"))
        )
    with session_scope() as session:
        assert idempotency_keys.get(session, owner_id=owner_id, key="old") is None
        assert idempotency_keys.get(session, owner_id=owner_id, key="new") is not None
        assert idempotency_keys.delete_expired(session) == 1
        assert session.get(IdempotencyKey, (owner_id, "old")) is None
        assert session.get(IdempotencyKey, (owner_id, "new")) is not None
