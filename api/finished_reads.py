"""Reading the predictions that waiting requests wake for, one statement per burst.

A batch's predictions finish together: one UPDATE, a NOTIFY each, and the requests waiting on
them (`Prefer: wait`, OpenAI-shaped streams) wake in the same turn of the event loop. Read one
by one, each took a pooled connection and a round trip of its own, with PostgreSQL and this
process waking for every one. Here the reads asked for in one turn go out as one statement when
that turn ends (up to MAX_ROWS ids each), and each request gets its row. One per API process,
on the pool it reads through (`request.state.reads`).
"""

import asyncio
import contextvars

from psycopg_pool import AsyncConnectionPool

from api import database
from db.repositories import predictions_async
from db.repositories.predictions import PredictionWithModel

Row = PredictionWithModel | None

# Ids a statement reads at most: a thousand woken requests' outputs arrive and decode in a few
# pieces, each under the statement timeout, rather than in one.
MAX_ROWS = 256


class FinishedReads:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._asked: dict[str, list[asyncio.Future[Row]]] = {}
        self._reading: set[asyncio.Task[None]] = set()  # referenced until done

    async def get(self, prediction_id: str) -> Row:
        """The prediction's row, whoever owns it (the caller checks), or None if it is gone."""
        loop = asyncio.get_running_loop()
        if not self._asked:  # a context of its own: the read is not the first asker's
            loop.call_soon(self._send, context=contextvars.Context())
        future: asyncio.Future[Row] = loop.create_future()
        self._asked.setdefault(prediction_id, []).append(future)
        return await future

    def _send(self) -> None:
        asked, self._asked = self._asked, {}
        ids = list(asked)
        for start in range(0, len(ids), MAX_ROWS):
            part = {id: asked[id] for id in ids[start : start + MAX_ROWS]}
            task = asyncio.create_task(self._read(part))
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)

    async def _read(self, asked: dict[str, list[asyncio.Future[Row]]]) -> None:
        try:
            async with database.connection(self.pool) as conn:
                rows = await predictions_async.get_many(conn, ids=list(asked))
        except Exception as exc:  # each request answers its own way (a 503, what it knows)
            for future in _waiting(asked):
                future.set_exception(exc)
            return
        except BaseException:  # cancelled with the process
            for future in _waiting(asked):
                future.cancel()
            raise
        found = {row.prediction.id: row for row in rows}
        for prediction_id, futures in asked.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(prediction_id))


def _waiting(asked: dict[str, list[asyncio.Future[Row]]]) -> list[asyncio.Future[Row]]:
    """The futures still awaited: a request whose client hung up has cancelled its own."""
    return [future for futures in asked.values() for future in futures if not future.done()]
