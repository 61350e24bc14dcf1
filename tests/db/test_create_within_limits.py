"""A create is one statement: the backlog counted and the row inserted only under both limits."""

import asyncio
from typing import Any

from psycopg import AsyncConnection

from db.ids import new_id
from db.repositories import predictions
from db.repositories.predictions_async import (
    Created,
    create_many_within_limits,
    create_within_limits,
)
from db.session import session_scope
from db.settings import get_database_settings
from db.tables import Prediction
from tests.support.helpers import create_prediction_row, create_version


def create(owner_id: str, version_id: str, **values: Any) -> tuple[str, Created]:
    row = {"input": {"text": "x"}, "deadline": None, "webhook": None,
           "webhook_events_filter": None} | values  # fmt: skip

    async def run() -> tuple[str, Created]:
        url = get_database_settings().libpq_url
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            prediction_id = new_id()
            created = await create_within_limits(
                conn, id=prediction_id, owner_id=owner_id, version_id=version_id, **row
            )
            return prediction_id, created

    return asyncio.run(run())


def find(prediction_id: str) -> Prediction | None:
    with session_scope() as session:
        row = predictions.get(session, id=prediction_id)
    return None if row is None else row.prediction


def owner_of(prediction_id: str) -> str:
    row = find(prediction_id)
    assert row is not None
    return row.owner_id


def test_under_both_limits_the_row_is_stored_starting_and_marked_enqueued() -> None:
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    owner = owner_of(create_prediction_row(version))
    prediction_id, created = create(
        owner, version, version_limit=10, owner_limit=10, input={"text": "ü"},
        webhook="https://example.com/hook", webhook_events_filter=["completed"],
    )  # fmt: skip
    assert created.created_at is not None
    assert (created.backlog.queued_for_version, created.backlog.unfinished_for_owner) == (1, 1)
    row = find(prediction_id)
    assert row is not None and row.status == "starting" and row.enqueued_at is not None
    assert row.input == {"text": "ü"} and row.webhook_events_filter == ["completed"]
    assert row.created_at == created.created_at and row.logs == "" and row.attempts == 0


def test_at_the_owners_limit_nothing_is_inserted_and_it_says_so() -> None:
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    owner = owner_of(create_prediction_row(version))
    prediction_id, created = create(owner, version, version_limit=10, owner_limit=1)
    assert created.created_at is None
    assert created.backlog.unfinished_for_owner == 1
    assert find(prediction_id) is None


def test_at_the_versions_limit_nothing_is_inserted_and_it_says_so() -> None:
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    for _ in range(3):  # other users' queued predictions
        create_prediction_row(version)
    owner = owner_of(create_prediction_row())  # one in flight, of another version
    prediction_id, created = create(owner, version, version_limit=3, owner_limit=2)
    assert created.created_at is None
    # Each count stops at its limit: cheap however deep the queue.
    assert (created.backlog.queued_for_version, created.backlog.unfinished_for_owner) == (3, 1)
    assert find(prediction_id) is None
    _, created = create(owner, version, version_limit=4, owner_limit=2)
    assert created.created_at is not None


def create_many(
    owner_id: str, version_id: str, count: int, **limits: int
) -> tuple[list[str], Created]:
    async def run() -> tuple[list[str], Created]:
        url = get_database_settings().libpq_url
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            ids = [new_id() for _ in range(count)]
            inputs = [{"text": f"t{i}"} for i in range(count)]
            created = await create_many_within_limits(
                conn, ids=ids, owner_id=owner_id, version_id=version_id, inputs=inputs,
                source="openai", **limits,
            )  # fmt: skip
            return ids, created

    return asyncio.run(run())


def test_several_are_stored_in_one_statement_all_or_none() -> None:
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    owner = owner_of(create_prediction_row(version))  # one queued, in flight
    ids, created = create_many(owner, version, 3, version_limit=4, owner_limit=4)
    assert created.created_at is not None
    rows = [find(prediction_id) for prediction_id in ids]
    assert [row.input["text"] for row in rows if row] == ["t0", "t1", "t2"]
    assert all(row and row.source == "openai" and row.enqueued_at for row in rows)
    assert {row.created_at for row in rows if row} == {created.created_at}
    # Room for two more, not three: none of the three.
    ids, created = create_many(owner, version, 3, version_limit=10, owner_limit=6)
    assert created.created_at is None and created.backlog.unfinished_for_owner == 4
    assert all(find(prediction_id) is None for prediction_id in ids)
    ids, created = create_many(owner, version, 3, version_limit=6, owner_limit=10)
    assert created.created_at is None and created.backlog.queued_for_version == 4
    _, created = create_many(owner, version, 2, version_limit=6, owner_limit=6)
    assert created.created_at is not None
