"""The in-process cache serves nothing it cannot vouch for."""

import asyncio

from api.cache import Cache
from api.status_listener import StatusListener
from db.repositories import cache_notices
from db.session import session_scope
from db.settings import get_database_settings


def test_nothing_is_served_while_the_listener_is_not_connected() -> None:
    cache: Cache[str] = Cache(ttl_s=60)
    cache.put("k", "v", cache.generation)
    assert cache.get("k") is None  # not stored either: it was not trusted
    cache.trusted = True
    cache.put("k", "v", cache.generation)
    assert cache.get("k") == "v"
    cache.trusted = False
    assert cache.get("k") is None


def test_a_value_read_before_a_change_was_heard_is_not_kept() -> None:
    cache: Cache[str] = Cache(ttl_s=60)
    cache.trusted = True
    generation = cache.generation  # a request starts reading the row...
    cache.clear()  # ...a change is announced meanwhile...
    cache.put("k", "stale", generation)  # ...and what it read is dropped
    assert cache.get("k") is None


def test_entries_expire_and_the_cache_stays_bounded() -> None:
    cache: Cache[int] = Cache(ttl_s=-1, max_items=2)
    cache.trusted = True
    cache.put("a", 1, cache.generation)
    assert cache.get("a") is None  # expired at once
    cache.ttl_s = 60
    for i, key in enumerate("abc"):
        cache.put(key, i, cache.generation)
    assert cache.get("c") == 2 and len(cache._items) <= 2


def test_the_listener_trusts_caches_only_while_connected_and_clears_them_on_a_notice() -> None:
    async def run() -> None:
        deaf = StatusListener("postgresql://postgres@127.0.0.1:1/nowhere")
        deaf.start()
        await asyncio.sleep(0.3)
        assert not deaf.principals.trusted and not deaf.versions.trusted
        await deaf.stop()

        listener = StatusListener(get_database_settings().libpq_url)
        listener.start()
        for _ in range(100):
            if listener.principals.trusted:
                break
            await asyncio.sleep(0.05)
        listener.principals.put("k", "v", listener.principals.generation)
        listener.versions.put("k", "v", listener.versions.generation)
        with session_scope() as session:
            cache_notices.announce(session, what=cache_notices.PRINCIPALS)
        for _ in range(100):
            if listener.principals.get("k") is None:
                break
            await asyncio.sleep(0.05)
        assert listener.principals.get("k") is None
        assert listener.versions.get("k") == "v"  # only what the notice names
        await listener.stop()

    asyncio.run(run())
