"""The API's asyncio PostgreSQL pool (psycopg), for the statements on its hot path.

Autocommit: a statement is its own transaction, durable when it returns. The rest of the API
keeps its SQLAlchemy sessions (db/session.py) in the thread pool.
"""

import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from db import json_codec
from db.engine import process_label
from db.settings import get_database_settings


async def open_pool() -> AsyncConnectionPool:
    settings = get_database_settings()
    pool = AsyncConnectionPool(
        settings.libpq_url,
        min_size=2,
        max_size=settings.pool_size,
        open=False,
        timeout=5,  # waiting for a free connection longer than this is an outage: 503
        configure=_configure,
        kwargs={
            "autocommit": True,
            "application_name": process_label(),
            "connect_timeout": 5,
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
        },
    )
    await pool.open(wait=False)
    return pool


async def _configure(conn: AsyncConnection[Any]) -> None:
    set_json_loads(json_codec.loads, conn)  # as the SQLAlchemy engine's (db/engine.py)


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled connection that the server has not closed while it sat idle.

    After a PostgreSQL restart every idle connection is dead, and a statement sent on one
    fails. A closed socket is readable, so a zero-timeout poll (no round trip, unlike a ping)
    finds it before anything is sent, and the pool replaces it.
    """
    while True:
        async with pool.connection() as conn:
            poll = select.poll()
            poll.register(conn.fileno(), select.POLLIN)
            if not poll.poll(0):
                yield conn
                return
            await conn.close()
