"""`Prefer: wait`: answer a create once the prediction is finished, or after N seconds.

The endpoint stores and commits as usual, then returns a `WaitingResponse`. Starlette sends it
after the request's transaction is over, so the wait holds no database connection and no
thread: it sleeps on the process's status listener (PostgreSQL LISTEN) until the prediction is
terminal, the time is up, or the client hangs up.
"""

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping

from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api.errors import BadRequest
from api.schemas.predictions import PredictionOut
from api.status_listener import status_listener
from db.tables import PredictionStatus

MAX_WAIT_S = 60
# While the listener is reconnecting nothing would wake a waiter: it reads the row this often.
RECHECK_S = 2.0
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
    prediction: PredictionOut, timeout_s: float, load: Callable[[], PredictionOut]
) -> PredictionOut:
    """The prediction once terminal, or as it is when `timeout_s` runs out."""
    listener = status_listener()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with listener.finished(prediction.id) as changed:
        prediction = await run_in_threadpool(load)  # it may have finished before we listened
        while not is_finished(prediction) and (remaining := deadline - loop.time()) > 0:
            timeout = remaining if listener.connected else min(remaining, RECHECK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
            changed.clear()
            prediction = await run_in_threadpool(load)
    return prediction


class WaitingResponse(Response):
    """201 with the prediction as it is when finished or when the wait is over; unfinished, it
    also carries `Location` (poll there)."""

    def __init__(
        self,
        prediction: PredictionOut,
        wait_s: int,
        load: Callable[[], PredictionOut],
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(status_code=201)
        self.prediction, self.wait_s, self.load = prediction, wait_s, load
        self.extra_headers = {**headers, "Preference-Applied": f"wait={wait_s}"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        waiting = asyncio.ensure_future(
            wait_until_finished(self.prediction, self.wait_s, self.load)
        )
        hung_up = asyncio.ensure_future(_disconnected(receive))
        await asyncio.wait({waiting, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        hung_up.cancel()
        if not waiting.done():  # the client left: nobody to answer
            waiting.cancel()
            return
        try:
            prediction = waiting.result()
        except SQLAlchemyError:  # the database went away meanwhile: answer with what we know
            prediction = self.prediction
        headers = dict(self.extra_headers)
        if not is_finished(prediction):
            headers["Location"] = prediction.urls.get
        response = JSONResponse(prediction.model_dump(mode="json"), 201, headers=headers)
        await response(scope, receive, send)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
