"""Hands the memory freed after a burst of requests back to the operating system.

A burst (1,000 concurrent `Prefer: wait` creates) leaves an API process about 45 MB larger, and
it stays so: glibc keeps freed blocks in its heaps for reuse, and CPython keeps each 1 MiB arena
of small objects while any object in it lives. It is a high-water mark, not a leak (the next
burst reuses it). glibc's `malloc_trim(0)` returns its heaps' free pages; CPython's arenas it
cannot touch (unless PYTHONMALLOC=malloc, an opt-in: README, "Memory"). The trim runs
in a thread every QUERN_MALLOC_TRIM_INTERVAL_S: ctypes releases the GIL, so the event loop goes
on answering meanwhile.
"""

import asyncio
import contextlib
import ctypes
import logging
import time
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        function = ctypes.CDLL(None).malloc_trim  # the process's own symbols include libc's
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_malloc_trim = _load_malloc_trim()


def trim() -> bool:
    """Give glibc's free pages back now. True if some memory was released."""
    if _malloc_trim is None:
        return False
    started = time.perf_counter()
    released = bool(_malloc_trim(0))
    log.debug("malloc_trim: %.1f ms, released: %s", (time.perf_counter() - started) * 1e3, released)
    return released


async def _trim_every(interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)


@contextlib.asynccontextmanager
async def trimming(interval_s: float) -> AsyncIterator[None]:
    """Trim every `interval_s` seconds while the block runs; never with 0 or without glibc."""
    if interval_s <= 0 or _malloc_trim is None:
        yield
        return
    task = asyncio.create_task(_trim_every(interval_s))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
