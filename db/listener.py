"""The one LISTEN-and-reconnect loop: a PostgreSQL connection that LISTENs on some channels,
hands each notice to its owner, and when the connection is lost (or the owner's work between
waits fails) waits out a backoff (common/backoff.py) and connects again.

Three owners: the API's status listener (api/status_listener.py: waiters and caches), a
worker's cancel listener (workers/leases.py) and the webhook dispatcher
(workers/webhooks/dispatcher.py). NOTIFY is delivered only to a connection that LISTENs when
the transaction commits, so whatever was announced while the connection was down is gone:
`on_connect` runs after every (re)connect, once the channels are listened to, for the owner to
catch up (re-read what it may have missed, trust its caches again, wake its waiters), and
`on_disconnect` after every failed attempt, before the backoff.

`run` is for a thread (the workers'), stopped by a threading.Event; `arun` is the same loop
for an asyncio task (the API's, where a thousand waiting requests are a thousand events, and
stopping is cancelling the task). Only the calls that block differ between the two; what is
listened to, the hooks, the backoff and the logging are this class's, once.
"""

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import Notify

from common.backoff import retry_delay
from db.engine import process_label
from db.settings import get_database_settings

log = logging.getLogger(__name__)

# The wait after the n-th failure in a row: min(cap, base * 2^(n-1)), all of it waited. Both
# 1 s: every reconnect waits one second, as the three loops this replaced each did.
RECONNECT_BASE_S = 1.0
RECONNECT_CAP_S = 1.0


class Listener:
    """LISTENs on `channels`; `connected` says whether the connection is up right now."""

    def __init__(
        self,
        name: str,
        channels: Sequence[str],
        *,
        url: str | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        reconnect_base_s: float = RECONNECT_BASE_S,
        reconnect_cap_s: float = RECONNECT_CAP_S,
    ) -> None:
        self.name = name
        self.channels = tuple(channels)
        self.url = url
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_cap_s = reconnect_cap_s
        self.connected = False
        self._failures = 0  # in a row

    def run(
        self,
        stopping: threading.Event,
        *,
        handle: Callable[[Notify], None] | None = None,
        timeout_s: float = 1.0,
        before_wait: Callable[[], float] | None = None,
        stop_after: int | None = None,
    ) -> None:
        """Until `stopping` is set: wait up to `timeout_s` for notices (stopping after
        `stop_after` of them), `handle` each, and again. `before_wait`, if given, runs before
        each wait (the owner's work) and returns how long that wait may be instead. Whatever
        fails, the connection or the owner's work, starts over on a new connection."""
        while not stopping.is_set():
            try:
                with psycopg.connect(**self._connection()) as conn:
                    for channel in self.channels:
                        conn.execute(f"LISTEN {channel}")
                    self._connected()
                    while not stopping.is_set():
                        wait_s = timeout_s if before_wait is None else before_wait()
                        # A notice that comes between two waits is kept for the next one.
                        for notice in conn.notifies(timeout=wait_s, stop_after=stop_after):
                            if handle is not None:
                                handle(notice)
            except Exception as exc:
                stopping.wait(self._failed(exc))
        self.connected = False

    async def arun(self, handle: Callable[[Notify], None]) -> None:
        """`run` for an asyncio task: `handle` each notice as it comes, until cancelled."""
        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(**self._connection()) as conn:
                        for channel in self.channels:
                            await conn.execute(f"LISTEN {channel}")
                        self._connected()
                        async for notice in conn.notifies():
                            handle(notice)
                except Exception as exc:
                    await asyncio.sleep(self._failed(exc))
        finally:
            self.connected = False

    def _connection(self) -> dict[str, Any]:
        """Arguments to connect with: autocommit (LISTEN takes effect at once), this process's
        name, and a bound on connecting (an unreachable host would hang for minutes)."""
        return {
            "conninfo": self.url or get_database_settings().libpq_url,
            "autocommit": True,
            "application_name": process_label(),
            "connect_timeout": 5,
        }

    def _connected(self) -> None:
        if self._failures:
            log.info("%s: connected to PostgreSQL again", self.name)
        self._failures = 0
        self.connected = True
        if self.on_connect is not None:
            self.on_connect()

    def _failed(self, exc: Exception) -> float:
        """Note a failure (logged if the connection was up, or if it is the first in a row),
        run `on_disconnect`, and return how long to wait before connecting again."""
        was_connected, self.connected = self.connected, False
        self._failures += 1
        if was_connected or self._failures == 1:
            log.warning(
                "%s failed (%s: %s); starting again on a new PostgreSQL connection",
                self.name, type(exc).__name__, exc,
                exc_info=was_connected,
            )  # fmt: skip
        if self.on_disconnect is not None:
            self.on_disconnect()
        return retry_delay(self._failures, self.reconnect_base_s, self.reconnect_cap_s, least=1.0)
