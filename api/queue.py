"""Sending work to the workers: task names and ids only, over Redis, never importing workers/
(the task name, queues and ids per message are in common/contract.py).

One publisher thread per API process: a create hands it the new row's ids and returns; what
piles up while it sends goes out as one message per (version, queue), up to
MAX_IDS_PER_MESSAGE ids each, so under load a message costs a fraction of a create.
"""

import logging
import threading
import time
from functools import lru_cache
from queue import Empty, SimpleQueue
from typing import NamedTuple

from celery import Celery

from api.settings import get_api_settings
from common import log_format
from common.contract import prediction_messages, send_predictions
from common.relay import publish_or_unmark
from db.repositories import predictions
from db.session import session_scope

log = logging.getLogger(__name__)

# Under load (the last message carried several ids), wait this long after the first id for
# others to share its message; a create at low load is sent at once.
LINGER_S = 0.005


@lru_cache
def get_client() -> Celery:
    """A Celery app used only to publish. It fails fast rather than hanging the publisher."""
    settings = get_api_settings()
    client = Celery("quern-api", broker=settings.redis_url, set_as_current=False)
    client.conf.update(
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_connect_timeout": 2,
            "socket_timeout": 2,
        },
        broker_connection_retry_on_startup=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        task_serializer="json",
    )
    return client


class Queued(NamedTuple):
    prediction_id: str
    version_id: str
    hardware: str


class Publisher:
    """Publishes committed predictions from a thread of its own; `close` sends what is left."""

    def __init__(self) -> None:
        self._queue: SimpleQueue[Queued | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="quern-publisher", daemon=True)
        self._thread.start()

    def submit(self, prediction_id: str, version_id: str, hardware: str) -> None:
        """After commit: the row is durable whatever happens to the message."""
        self._queue.put(Queued(prediction_id, version_id, hardware))

    def close(self, timeout_s: float = 10) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        company = False  # the last send carried more than one prediction: creates are busy
        while True:
            taken = [self._queue.get()]
            if company:  # a lone create at low load goes at once
                time.sleep(LINGER_S)
            while True:
                try:
                    taken.append(self._queue.get_nowait())
                except Empty:
                    break
            company = len(taken) > 1
            publish([item for item in taken if item is not None])
            if None in taken:
                return


def publish(items: list[Queued]) -> None:
    """One message per (version, queue) and MAX_IDS_PER_MESSAGE ids. A message that cannot be
    sent (Redis down) leaves its rows marked not enqueued (common/relay.py): the workers'
    sweeper sends them."""
    for message, chunk in prediction_messages(items):
        with log_format.log_context(prediction_ids=chunk):
            _send(message, chunk)


def _send(message: tuple[str, str], ids: list[str]) -> None:
    def failed(unsent: list[str], exc: Exception) -> None:
        log.error(
            "could not enqueue predictions %s; they stay starting", " ".join(unsent), exc_info=exc
        )

    def send(message: tuple[str, str], ids: list[str]) -> None:
        send_predictions(get_client(), message, ids)

    if not publish_or_unmark([(message, ids)], send, _unmark, failed=failed):
        log.debug("queued %d predictions of version %s", len(ids), message[0])


def _unmark(ids: list[str]) -> None:
    try:
        with session_scope() as session:
            predictions.mark_not_enqueued(session, ids=ids)
    except Exception:  # then the sweeper finds them by the age of their enqueue mark
        log.exception("could not mark predictions as not enqueued")
