"""The async pool survives a PostgreSQL restart without failing a request."""

import asyncio

import psycopg

from api.database import connection, open_pool
from db.settings import get_database_settings


def test_connections_the_server_closed_while_idle_are_replaced_before_use() -> None:
    async def run() -> None:
        pool = await open_pool()
        try:
            await pool.wait()
            pids = []
            async with pool.connection() as first, pool.connection() as second:
                pids = [first.info.backend_pid, second.info.backend_pid]
            url = get_database_settings().libpq_url
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
                for pid in pids:  # what a restart does to every idle connection
                    await admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            await asyncio.sleep(0.2)
            # Each of the dead ones would fail a statement sent on it; none is used.
            for _ in range(len(pids) + 1):
                async with connection(pool) as conn:
                    cursor = await conn.execute("SELECT 1")
                    assert await cursor.fetchone() == (1,)
        finally:
            await pool.close()

    asyncio.run(run())
