"""The one LISTEN loop (db/listener.py) comes back after its connection is killed, and tells
its owner so, in a thread (the workers') as in an asyncio task (the API's)."""

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from psycopg import Notify

from db.listener import Listener
from db.settings import get_database_settings
from tests.support.helpers import kill_listeners
from tests.support.processes import wait_until


def _notify(channel: str, payload: str) -> None:
    with psycopg.connect(get_database_settings().libpq_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def noting(channel: str, events: list[str]) -> Listener:
    """A listener on `channel` that notes its connects and disconnects, reconnecting fast."""
    return Listener(
        "test listener",
        [channel],
        on_connect=lambda: events.append("connect"),
        on_disconnect=lambda: events.append("disconnect"),
        reconnect_base_s=0.1,
        reconnect_cap_s=0.1,
    )


def test_a_thread_listener_reconnects_after_its_connection_is_killed() -> None:
    channel = f"quern_test_{uuid.uuid4().hex[:12]}"
    events: list[str] = []
    heard: list[str] = []
    listener = noting(channel, events)
    stopping = threading.Event()
    thread = threading.Thread(
        target=listener.run,
        args=(stopping,),
        kwargs={"handle": lambda n: heard.append(n.payload), "timeout_s": 0.1},
        daemon=True,
    )
    thread.start()
    try:
        wait_until(lambda: listener.connected, 10, "the first connection")
        _notify(channel, "one")
        wait_until(lambda: heard == ["one"], 10, "the first notice")
        assert kill_listeners(channel) == 1
        wait_until(lambda: events.count("connect") == 2 and listener.connected, 10, "again")
        assert events[:3] == ["connect", "disconnect", "connect"]
        _notify(channel, "two")
        wait_until(lambda: heard == ["one", "two"], 10, "a notice after the reconnect")
    finally:
        stopping.set()
        thread.join(10)
    assert not thread.is_alive() and not listener.connected


def test_an_asyncio_listener_reconnects_after_its_connection_is_killed() -> None:
    channel = f"quern_test_{uuid.uuid4().hex[:12]}"
    events: list[str] = []
    heard: list[str] = []

    async def until(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    def handle(notice: Notify) -> None:
        heard.append(notice.payload)

    async def run() -> None:
        listener = noting(channel, events)
        task = asyncio.create_task(listener.arun(handle))
        try:
            await until(lambda: listener.connected, "the first connection")
            await asyncio.to_thread(_notify, channel, "one")
            await until(lambda: heard == ["one"], "the first notice")
            assert await asyncio.to_thread(kill_listeners, channel) == 1
            await until(lambda: events.count("connect") == 2 and listener.connected, "again")
            assert events[:3] == ["connect", "disconnect", "connect"]
            await asyncio.to_thread(_notify, channel, "two")
            await until(lambda: heard == ["one", "two"], "a notice after the reconnect")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not listener.connected

    asyncio.run(run())
