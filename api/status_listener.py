"""Each API process keeps one PostgreSQL connection that LISTENs for predictions that end
(migrations 0002 and 0013 NOTIFY "<id> <status>" on every committed terminal status), and
wakes the requests waiting on a prediction: `Prefer: wait` and event streams. A thousand
waiting requests cost a thousand asyncio events, not a thousand connections or threads, and
nothing polls. The connection, its reconnects and their backoff are db/listener.py's; what a
notice and a (re)connect mean here is this module's.

The same connection hears changes to what the process caches (callers, versions: api/cache.py)
and clears those caches; while it is down they are not trusted.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import Notify

from api.cache import Cache
from db.listener import Listener
from db.repositories import cache_notices
from db.repositories.predictions import STATUS_CHANNEL
from db.settings import get_database_settings
from db.tables import PredictionStatus

# How stale a cached row may get when its change is not announced (an operator's SQL).
CACHE_TTL_S = 30.0


class StatusListener:
    def __init__(self, url: str) -> None:
        self.url = url
        self._listener = Listener(
            "status listener",
            [STATUS_CHANNEL, cache_notices.CHANNEL],
            url=url,
            on_connect=self._connected,
            on_disconnect=self._disconnected,
        )
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        # Callers by API-token hash or user id (api/authentication.py); versions by id or name.
        self.principals: Cache[Any] = Cache(CACHE_TTL_S)
        self.versions: Cache[Any] = Cache(CACHE_TTL_S)
        self._caches = {
            cache_notices.PRINCIPALS: self.principals,
            cache_notices.VERSIONS: self.versions,
        }

    @property
    def connected(self) -> bool:
        """Whether the LISTEN connection is up: while it is not, changes may go unheard."""
        return self._listener.connected

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._listener.arun(self._heard), name="status-listener"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @asynccontextmanager
    async def finished(self, prediction_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when the prediction reaches a terminal status, and also whenever the
        listener (re)connects, since a change may have gone unheard: then check the row."""
        event = self.watch(prediction_id)
        try:
            yield event
        finally:
            self.unwatch(prediction_id, event)

    def watch(self, prediction_id: str) -> asyncio.Event:
        """`finished` for a caller that starts watching before the row exists, and stops later."""
        self.start()
        event = asyncio.Event()
        self._waiters.setdefault(prediction_id, set()).add(event)
        return event

    def unwatch(self, prediction_id: str, event: asyncio.Event) -> None:
        waiting = self._waiters.get(prediction_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[prediction_id]

    def _heard(self, notice: Notify) -> None:
        if notice.channel == cache_notices.CHANNEL:
            cache = self._caches.get(notice.payload)
            if cache is not None:
                cache.clear()
            return
        prediction_id, _, status = notice.payload.partition(" ")
        if PredictionStatus(status).is_terminal:
            for event in self._waiters.get(prediction_id, ()):
                event.set()

    def _connected(self) -> None:
        self._reset_caches(trusted=True)  # what was missed meanwhile is gone
        self._wake_all()

    def _disconnected(self) -> None:
        self._reset_caches(trusted=False)
        self._wake_all()

    def _reset_caches(self, *, trusted: bool) -> None:
        for cache in self._caches.values():
            cache.trusted = trusted
            cache.clear()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()


_listeners: dict[asyncio.AbstractEventLoop, StatusListener] = {}


def status_listener() -> StatusListener:
    """This event loop's listener (one per API process; tests may run several loops)."""
    loop = asyncio.get_running_loop()
    if loop not in _listeners:
        _listeners[loop] = StatusListener(get_database_settings().libpq_url)
    return _listeners[loop]
