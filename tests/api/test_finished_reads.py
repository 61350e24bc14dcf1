"""Reads of finished predictions asked for in one turn of the event loop go to PostgreSQL as
one statement, and each request gets its own row (api/finished_reads.py)."""

import asyncio
from typing import Any

import pytest
from psycopg_pool import PoolClosed

from api import finished_reads
from api.database import open_pool
from api.finished_reads import FinishedReads
from db.ids import new_id
from db.repositories import predictions_async
from tests.support.helpers import create_prediction_row


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ids each statement read (the real one runs)."""
    sent: list[list[str]] = []
    real = predictions_async.get_many

    async def get_many(conn: Any, *, ids: list[str], owner_id: str | None = None) -> Any:
        sent.append(list(ids))
        return await real(conn, ids=ids, owner_id=owner_id)

    monkeypatch.setattr(predictions_async, "get_many", get_many)
    return sent


def test_reads_asked_together_are_one_statement_and_each_gets_its_row(
    statements: list[list[str]],
) -> None:
    first, second, gone = create_prediction_row(text="a"), create_prediction_row(text="b"), new_id()

    async def run() -> list[Any]:
        pool = await open_pool()
        try:
            reads = FinishedReads(pool)
            together = await asyncio.gather(
                reads.get(first), reads.get(second), reads.get(first), reads.get(gone)
            )
            later = await reads.get(second)
            return [*together, later]
        finally:
            await pool.close()

    a, b, a_again, missing, b_later = asyncio.run(run())
    assert statements == [[first, second, gone], [second]]
    texts = [row.prediction.input["text"] for row in (a, b, a_again, b_later)]
    assert texts == ["a", "b", "a", "b"]
    assert missing is None


def test_a_request_that_gives_up_leaves_the_others_their_rows(
    statements: list[list[str]],
) -> None:
    first, second = create_prediction_row(), create_prediction_row()

    async def run() -> Any:
        pool = await open_pool()
        try:
            reads = FinishedReads(pool)
            hung_up = asyncio.create_task(reads.get(first))
            waiting = asyncio.create_task(reads.get(second))
            await asyncio.sleep(0)  # both asked; the statement is on its way
            hung_up.cancel()
            return await waiting
        finally:
            await pool.close()

    assert asyncio.run(run()).prediction.id == second
    assert statements == [[first, second]]


def test_a_failed_read_fails_every_request_that_asked() -> None:
    async def run() -> list[Any]:
        pool = await open_pool()
        await pool.close()  # the database is out of reach
        reads = FinishedReads(pool)
        return await asyncio.gather(reads.get(new_id()), reads.get(new_id()),
                                    return_exceptions=True)  # fmt: skip

    assert [type(result) for result in asyncio.run(run())] == [PoolClosed, PoolClosed]


def test_many_reads_asked_together_go_in_statements_of_at_most_max_rows(
    statements: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finished_reads, "MAX_ROWS", 2)
    ids = [create_prediction_row(text=str(n)) for n in range(5)]

    async def run() -> list[Any]:
        pool = await open_pool()
        try:
            reads = FinishedReads(pool)
            return await asyncio.gather(*(reads.get(id) for id in ids))
        finally:
            await pool.close()

    assert [row.prediction.id for row in asyncio.run(run())] == ids
    assert sorted(statements) == sorted([ids[:2], ids[2:4], ids[4:]])
