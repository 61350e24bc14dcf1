"""`GET /v1/predictions/{id}/stream`: the prediction's events as Server-Sent Events.

Workers append `output` chunks (tokens) and `logs` to a Redis Stream per prediction
(`workers/events.py`) before they commit its final status. This replays the stream from the
client's `Last-Event-ID` (entry ids are the SSE ids, so a reconnect neither loses nor repeats a
chunk), follows it live, and, once the status listener says the prediction is terminal, sends
what is left, then `error` (if it failed) and `done`. A stream opened after the Redis entries
expired (10 minutes after the end: workers/events.py) replays the stored output as one
`output` event.

It shows one attempt: every entry names the attempt that made it, and entries of an attempt
older than the one running (or recorded) are skipped, so a retry's output never follows the
lost attempt's, and a worker that lost its claim adds nothing. A client that was shown part of
an attempt that is then superseded gets an `error` event saying so and the stream ends; opened
again without `Last-Event-ID`, it follows the new attempt from its start.

It opens with a token (the caller's predictions, or everyone's for an admin) or with the
prediction's signed `urls.stream` (db/signed_urls.py), checked once when it opens: a stream
opened in time runs to its end. File URLs in `output` events are signed as in the prediction
object.
"""

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import SIGNED_URL_REFUSED, SignedUrl, Transaction
from api.errors import Forbidden, NotFound
from api.schemas.predictions import PredictionOut
from api.services import predictions
from api.services.waiting import RECHECK_S, Load, is_finished
from api.settings import get_api_settings
from api.status_listener import status_listener
from common import log_format
from common.contract import events_key
from db.repositories import predictions as prediction_rows
from db.session import session_scope
from db.signed_urls import get_url_signer
from db.tables import User

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
READ_BLOCK_MS = 15_000  # a cancelled read costs a reconnect, so block long
# A blocked read answers within READ_BLOCK_MS: the socket must wait longer, or a quiet spell
# (a model loading before its first token) reads as a lost Redis and the stream goes silent.
SOCKET_TIMEOUT_S = READ_BLOCK_MS / 1000 + 5
READ_COUNT = 500


_clients: dict[asyncio.AbstractEventLoop, aioredis.Redis] = {}


def _redis() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    if loop not in _clients:
        _clients[loop] = aioredis.Redis.from_url(
            get_api_settings().redis_url,
            socket_connect_timeout=1,
            socket_timeout=SOCKET_TIMEOUT_S,
        )
    return _clients[loop]


def open_stream(
    tx: Transaction, reader: User | SignedUrl, prediction_id: str, base_url: str
) -> tuple[PredictionOut, Load]:
    """The prediction to stream and how to read it again. Not the caller's: 404; a signed URL
    that is tampered, expired or another prediction's: 403 (before any query)."""
    if isinstance(reader, User):
        prediction = predictions.get(tx, reader, prediction_id, base_url)
        return prediction, partial(
            run_in_threadpool, predictions.load, reader, prediction.id, base_url
        )
    if not get_url_signer().check_stream(prediction_id, reader.expires, reader.signature):
        raise Forbidden(SIGNED_URL_REFUSED)
    # This one prediction, whoever owns it (as `predictions.find` reads for an admin).
    prediction = _signed_get(tx.session, prediction_id, base_url)
    return prediction, partial(run_in_threadpool, _signed_load, prediction_id, base_url)


def _signed_get(session: Session, prediction_id: str, base_url: str) -> PredictionOut:
    log_format.prediction_id.set(prediction_id)
    row = prediction_rows.get(session, id=prediction_id, owner_id=None)
    if row is None:  # deleted with its owner
        raise NotFound(f"No prediction {prediction_id!r}")
    return predictions.to_out(row, base_url)


def _signed_load(prediction_id: str, base_url: str) -> PredictionOut:
    with session_scope() as session:
        return _signed_get(session, prediction_id, base_url)


def _sse(
    entry_id: str, fields: dict[bytes, bytes], prediction_id: str
) -> tuple[ServerSentEvent, Any]:
    """Text goes out as is (one `data:` line per line); anything else as JSON. File URLs in an
    output are signed, as in the prediction object."""
    event = fields[b"event"].decode()
    value = json.loads(fields[b"data"])
    if event == "output":
        value = get_url_signer().sign_files(value, prediction_id, time.time())
    data = value if isinstance(value, str) else json.dumps(value)
    return ServerSentEvent(data, event=event, id=entry_id), value if event == "output" else None


def live_attempt(prediction: PredictionOut) -> int:
    """The attempt whose output a stream shows: the one running or recorded, or, while the
    prediction waits in the queue, the next one."""
    attempts = prediction.metrics.attempts
    return attempts + 1 if prediction.status == "starting" else attempts


@dataclass
class OneAttempt:
    """Which attempt's entries a connection shows, and which it has shown."""

    live: int
    shown: int | None = None

    def admits(self, attempt: int) -> bool:
        """Whether an entry of `attempt` (0: an entry that names none) is of the live attempt;
        one of a newer attempt makes that the live one."""
        if attempt and attempt < self.live:
            return False
        self.live = max(self.live, attempt)
        return True

    def follow(self, prediction: PredictionOut) -> None:
        self.live = max(self.live, live_attempt(prediction))

    def superseded(self, cursor: str) -> ServerSentEvent | None:
        """The closing `error` for a client that was shown part of an attempt now superseded."""
        if self.shown is None or self.shown >= self.live:
            return None
        message = (
            f"Attempt {self.shown} was interrupted and the prediction is running again; open "
            f"the stream anew, without Last-Event-ID, to follow attempt {self.live} from its start"
        )
        return ServerSentEvent(message, event="error", id=cursor)


async def prediction_events(
    prediction: PredictionOut,
    load: Load,
    last_event_id: str | None,
    *,
    watching: asyncio.Event | None = None,
    ended: Callable[[PredictionOut], None] | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """`watching`: the listener's event for a prediction the caller has watched since before
    its row existed (then `prediction` is as it was created, and is not read again first); the
    stream stops the watch. `ended` is told the prediction as it ended, before the last events.
    """
    key = events_key(prediction.id)
    cursor = last_event_id if last_event_id and STREAM_ID.match(last_event_id) else "0-0"
    resumed = cursor != "0-0"
    streamed: list[Any] = []  # output values sent on this connection
    listener = status_listener()
    changed = watching or listener.watch(prediction.id)
    try:
        if watching is None:
            prediction = await load()
        one = OneAttempt(
            live_attempt(prediction), await _attempt_of(key, cursor) if resumed else None
        )
        while True:
            if ending := one.superseded(cursor):
                yield ending
                return
            finished = is_finished(prediction)
            try:
                read = await _read(key, cursor, None if finished else changed, listener.connected)
            except RedisError:  # no live events: wait for the end; the output comes from the row
                if finished:
                    break
                read = []
                await _first(changed.wait(), limit_s=None if listener.connected else RECHECK_S)
            if finished and not read:
                break  # everything written before the end has been sent
            for entry_id, fields in read:
                if not one.admits(int(fields.get(b"attempt", 0))):
                    cursor = entry_id.decode()
                    continue
                if ending := one.superseded(cursor):
                    yield ending
                    return
                one.shown = one.live
                cursor = entry_id.decode()
                event, output = _sse(cursor, fields, prediction.id)
                if output is not None:
                    streamed.append(output)
                yield event
            if changed.is_set() or not listener.connected:
                changed.clear()
                prediction = await load()
                one.follow(prediction)
    finally:
        listener.unwatch(prediction.id, changed)
    if ended is not None:
        ended(prediction)
    for event in _ending(prediction, streamed, resumed, cursor):
        yield event


async def _attempt_of(key: str, entry_id: str) -> int | None:
    """The attempt of the entry a resuming client saw last, if it is still kept."""
    try:
        entries: Any = await _redis().xrange(key, entry_id, entry_id, count=1)
    except RedisError:
        return None
    return int(entries[0][1].get(b"attempt", 0)) or None if entries else None


async def _read(
    key: str, cursor: str, changed: asyncio.Event | None, connected: bool
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries after `cursor`: at once when `changed` is None (draining), else the next ones
    as soon as they come, or none when `changed` is set first."""
    reply: Any  # RESP2: [[key, [(id, fields), ...]]]
    if changed is None:
        reply = await _redis().xread({key: cursor}, count=READ_COUNT)
    else:
        block_ms = READ_BLOCK_MS if connected else int(RECHECK_S * 1000)
        reading = _redis().xread({key: cursor}, count=READ_COUNT, block=block_ms)
        reply = await _first(reading, changed.wait())
    return [entry for _, entries in reply or [] for entry in entries]


async def _first(*awaitables: Awaitable[Any], limit_s: float | None = None) -> Any:
    """The first awaitable's result if it finishes first, else None; the rest are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the stream itself is cancelled (its client left): no read lingers
        for task in tasks:
            if not task.done():
                task.cancel()
    return tasks[0].result() if tasks[0] in done else None


def _ending(
    prediction: PredictionOut, streamed: list[Any], resumed: bool, cursor: str
) -> list[ServerSentEvent]:
    """The last events carry the last entry's id (`0-0`: none): Replicate's Python client drops
    events until it has seen an id, and a reconnect from it has nothing newer to replay."""
    events = []
    output = prediction.output
    if prediction.status == "succeeded" and output is not None:
        missing = _unsent(output, streamed, resumed)
        if missing is not None:
            data = missing if isinstance(missing, str) else json.dumps(missing)
            events.append(ServerSentEvent(data, event="output", id=cursor))
    if prediction.error:
        events.append(ServerSentEvent(prediction.error, event="error", id=cursor))
    done = json.dumps({"status": prediction.status})
    events.append(ServerSentEvent(done, event="done", id=cursor))
    return events


def _unsent(output: Any, streamed: list[Any], resumed: bool) -> Any:
    """What of the stored output the client has not had: all of it when no events were kept
    (they expired, or Redis was down), the rest of a text cut short, else nothing."""
    if not streamed:
        return None if resumed else output
    if isinstance(output, str) and all(isinstance(chunk, str) for chunk in streamed):
        sent = "".join(streamed)
        if output.startswith(sent) and len(output) > len(sent):
            return output[len(sent) :]
    return None
