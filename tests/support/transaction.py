"""`rolled_back`: a test's writes in one transaction that is rolled back at its end.

Every other test commits into the run's one database, so a count over a whole table is only
ever "at least". A test given this fixture runs every `session_scope()` (its own and the code's
it calls) in a savepoint of one outer transaction on one connection (SQLAlchemy's "joining a
session into an external transaction", join_transaction_mode="create_savepoint"): a commit
releases the savepoint, a failure rolls back to it, and the end of the test rolls everything
back. Inside, the test may set aside what earlier tests committed (delete or mark it) to count
exactly what it made itself; nothing of that outlives it.

Only for code that goes through `db.session.session_scope`: another connection (a listener, a
psycopg pool, a thread with its own session) sees none of it, and NOTIFY is never sent.
`now()` is the outer transaction's start throughout.
"""

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker


@pytest.fixture
def rolled_back(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connection]:
    import db.session
    from db.engine import get_engine

    connection = get_engine().connect()
    outer = connection.begin()
    factory: sessionmaker[Session] = sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    monkeypatch.setattr(db.session, "get_sessionmaker", lambda: factory)
    try:
        yield connection
    finally:
        outer.rollback()
        connection.close()
