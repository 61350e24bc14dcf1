"""`Prefer: wait`: answer a create once the prediction is finished, or after N seconds.

The endpoint stores and commits as usual, then returns a `WaitingResponse`. Starlette sends it
after the request's transaction is over, so the wait holds no database connection and no
thread: it sleeps on the process's status listener (PostgreSQL LISTEN) until the prediction is
terminal, the time is up, or the client hangs up, then reads the row once, on the event loop,
in one statement with the other requests woken in the same turn (api/finished_reads.py).
"""

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import psycopg
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from api.errors import BadRequest
from api.schemas.predictions import PredictionOut
from api.status_listener import status_listener
from db.tables import PredictionStatus

T = TypeVar("T")

MAX_WAIT_S = 60
# While the listener is reconnecting nothing would wake a waiter: it reads the row this often.
RECHECK_S = 2.0
# Reads the prediction as it is now.
Load = Callable[[], Awaitable[PredictionOut]]
_WAIT = re.compile(r'^\s*wait\s*(?:=\s*"?([^",;\s]*)"?)?\s*(?:;.*)?$', re.IGNORECASE)


def parse_prefer_wait(prefer: str | None) -> int | None:
    """Seconds to wait from `Prefer: wait` (60) or `Prefer: wait=N` (1-60); None without it.
    Other preferences are ignored, as RFC 7240 asks."""
    for preference in (prefer or "").split(","):
        match = _WAIT.match(preference)
        if match is None:
            continue
        value = match.group(1)
        if value is None or value == "":
            return MAX_WAIT_S
        if not value.isdigit() or not 1 <= int(value) <= MAX_WAIT_S:
            raise BadRequest(f"Prefer: wait={value!r} must be a whole number of seconds, 1-60")
        return int(value)
    return None


def is_finished(prediction: PredictionOut) -> bool:
    return PredictionStatus(prediction.status).is_terminal


async def wait_until_finished(
    prediction: PredictionOut,
    timeout_s: float,
    load: Load,
    changed: asyncio.Event,
    *,
    unheard: bool,
) -> PredictionOut:
    """The prediction once terminal, or as it is when `timeout_s` runs out. `changed` is the
    listener's event for it; `unheard`: it may have finished before the watch began."""
    listener = status_listener()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    if unheard:
        prediction = await load()
    while not is_finished(prediction) and (remaining := deadline - loop.time()) > 0:
        timeout = remaining if listener.connected else min(remaining, RECHECK_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        changed.clear()
        prediction = await load()
    return prediction


class WaitingResponse(Response):
    """201 with the prediction once finished, or, when the wait is over first, with status
    `starting` and `Location` (poll there).

    `watching`: the listener's event for a prediction this request watched since before its
    row existed (then no change can have gone unheard, and no first read is needed); this
    response stops the watch. Without it, the response watches from now on, and reads first.
    """

    def __init__(
        self,
        prediction: PredictionOut,
        wait_s: int,
        load: Load,
        headers: Mapping[str, str],
        watching: asyncio.Event | None = None,
    ) -> None:
        super().__init__(status_code=201)
        self.prediction, self.wait_s, self.load = prediction, wait_s, load
        self.watching = watching
        self.extra_headers = {**headers, "Preference-Applied": f"wait={wait_s}"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = status_listener()
        changed = self.watching or listener.watch(self.prediction.id)
        try:
            prediction = await self._wait(receive, changed)
        finally:
            listener.unwatch(self.prediction.id, changed)
        if prediction is None:  # the client left: nobody to answer
            return
        headers = dict(self.extra_headers)
        if not is_finished(prediction):
            headers["Location"] = prediction.urls.get
            # As Replicate answers a wait that ran out: its clients read any other status
            # here as finished. A GET tells whether it is running yet.
            prediction = prediction.model_copy(update={"status": PredictionStatus.STARTING})
        response = Response(prediction.model_dump_json(), 201, headers=headers,
                            media_type="application/json")  # fmt: skip
        await response(scope, receive, send)

    async def _wait(self, receive: Receive, changed: asyncio.Event) -> PredictionOut | None:
        done = await unless_hung_up(
            wait_until_finished(
                self.prediction, self.wait_s, self.load, changed, unheard=self.watching is None
            ),
            receive,
        )
        if done is None:
            return None
        try:
            return done.result()
        except (SQLAlchemyError, psycopg.Error):  # the database went away: answer what we know
            return self.prediction


async def unless_hung_up(work: Awaitable[T], receive: Receive) -> asyncio.Future[T] | None:
    """`work` run until it ends, or until the client hangs up (then it is canceled, and this is
    None): its finished future, whose result (or exception) is the caller's to take."""
    waiting = asyncio.ensure_future(work)
    hung_up = asyncio.ensure_future(client_disconnected(receive))
    await asyncio.wait({waiting, hung_up}, return_when=asyncio.FIRST_COMPLETED)
    hung_up.cancel()
    if not waiting.done():
        waiting.cancel()
        return None
    return waiting


async def client_disconnected(receive: Receive) -> None:
    """Returns once the client has hung up (the request body read, as it is by now)."""
    while (await receive())["type"] != "http.disconnect":
        pass
