"""Dynamic batching: items submitted from many threads are handed over in groups.

The mechanism Ray Serve's `@serve.batch` uses, on threads: each Celery task thread submits
its prediction and blocks on a future; one thread per batcher waits for the first item,
then gathers more until `max_size` or `max_wait_s` after that first item arrived, and hands
the group to `handle`. Items that arrive while a group runs simply queue, so a busy model
batches naturally, and they go as soon as it is free: their window has passed. An idle one
does not wait at all: when the last group was a single item and nothing arrived within
`max_wait_s` before this one, nothing suggests that more is coming, so the item goes at once
with whatever is already queued (one user at a time pays no window; the first item of a
burst goes alone, and the rest gather as before).
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Pending(Generic[T]):
    """An item and the future its submitter waits on; `handle` must resolve the future."""

    item: T
    future: Future[None] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        handle: Callable[[list[Pending[T]]], None],
        *,
        max_size: int,
        max_wait_s: float,
    ) -> None:
        self.name = name
        self.max_size = max(1, max_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self._handle = handle
        self._queue: queue.SimpleQueue[Pending[T]] = queue.SimpleQueue()
        self._last: tuple[int, float] | None = None  # the last group's size, its last arrival
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[None]:
        pending = Pending(item)
        self._queue.put(pending)
        return pending.future

    def _gather(self) -> list[Pending[T]]:
        batch = [self._queue.get()]
        idle = self._last is not None and (
            self._last[0] == 1 and batch[0].arrived - self._last[1] > self.max_wait_s
        )
        # The window counts from the first item's arrival: one that queued behind a running
        # group has waited its share already and goes with whatever is queued.
        deadline = batch[0].arrived + (0.0 if idle else self.max_wait_s)
        while len(batch) < self.max_size:
            try:
                # Whatever is already queued joins at once; then wait out the rest of the window.
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        self._last = (len(batch), batch[-1].arrived)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._gather()
            try:
                self._handle(batch)
            except BaseException as exc:  # the thread must outlive any one batch
                log.exception("batch on %s failed", self.name)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
