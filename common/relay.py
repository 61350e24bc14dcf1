"""Publish or un-mark: the one relay from PostgreSQL rows to Celery messages.

A row is the truth and a message only a nudge. The rows to publish are already marked as
enqueued (in the transaction that created or took them); each batch is then published, and
the ids of every batch that could not be (Redis down) are un-marked together, so that the
workers' sweeper (predictions) or dispatcher (webhook deliveries) publishes them later. Three
relays use it: the API's publisher (api/queue.py), the sweeper (workers/sweeper.py) and the
dispatcher (workers/webhooks/dispatcher.py).
"""

from collections.abc import Callable, Iterable
from typing import TypeVar

K = TypeVar("K")


def publish_or_unmark(
    batches: Iterable[tuple[K, list[str]]],
    send: Callable[[K, list[str]], object],
    unmark: Callable[[list[str]], object],
    *,
    failed: Callable[[list[str], Exception], object] | None = None,
) -> list[str]:
    """`send(key, ids)` each batch, a key (what its message needs besides the ids: a version
    and its queue, say) and ids. The ids of the batches it raised for are handed to
    `failed(ids, last exception)` (the caller's log line), then to `unmark`, once, and
    returned. An exception from `unmark` is the caller's."""
    unsent: list[str] = []
    error: Exception | None = None
    for key, ids in batches:
        try:
            send(key, ids)
        except Exception as exc:
            unsent += ids
            error = exc
    if error is not None:
        if failed is not None:
            failed(unsent, error)
        unmark(unsent)
    return unsent
