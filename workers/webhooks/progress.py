"""`output` and `logs` webhooks of the predictions this worker runs: at most one of each per
EVERY_S per prediction.

The batch runner tells the throttle (one per worker runtime) what it claims (`watch`: which
predictions want these events, as the claim found them), hands it every streamed chunk
(`output_chunks`, on the model's thread: it only counts and, when due, queues a write for
another thread), then what it records (`record`, in the recording transaction: the output of a
model that did not stream, each attempt's logs) and finally `forget`s the batch. A streamed
`output` event carries the output so far: for text, the chunks concatenated; otherwise the
list of chunks. The final output always comes with `completed`; a throttled last chunk is not
sent on its own. (`start` and `completed` are PostgreSQL's to write: see WebhookEvent in
db/tables/webhook_delivery.py.)
"""

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from common import log_format
from db.repositories import webhook_deliveries
from db.repositories.predictions import Claim
from db.session import session_scope
from db.tables import PROGRESS_EVENTS, WebhookEvent

log = logging.getLogger(__name__)

EVERY_S = 0.5
PROGRESS = frozenset(PROGRESS_EVENTS)


class ProgressThrottle:
    """Which running predictions want progress events, and when each was last sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: dict[str, frozenset[str]] = {}  # prediction id -> wanted of output, logs
        self._attempts: dict[str, int] = {}  # prediction id -> the attempt watched
        self._chunks: dict[str, list[Any]] = {}  # prediction id -> streamed chunks so far
        self._sent_at: dict[tuple[str, str], float] = {}  # (prediction id, event) -> monotonic
        # One thread, so a prediction's output events are written in the order they were made.
        self._writer = log_format.ContextThreadPoolExecutor(
            max_workers=1, thread_name_prefix="webhook-output"
        )

    def watch(self, claims: list[Claim]) -> None:
        """At claim time: learn which of these predictions want `output` or `logs` events (an
        attempt starts afresh: nothing is left of an earlier one that was never recorded)."""
        self.forget(claim.id for claim in claims)
        wanted = {claim.id: claim.webhook_events & PROGRESS for claim in claims}
        with self._lock:
            self._wanted.update({id: events for id, events in wanted.items() if events})
            self._attempts.update(
                {claim.id: claim.attempts for claim in claims if wanted[claim.id]}
            )

    def forget(self, prediction_ids: Iterable[str]) -> None:
        with self._lock:
            for prediction_id in prediction_ids:
                self._wanted.pop(prediction_id, None)
                self._attempts.pop(prediction_id, None)
                self._chunks.pop(prediction_id, None)
                for event in PROGRESS_EVENTS:
                    self._sent_at.pop((prediction_id, event), None)

    def _due(self, prediction_id: str, event: str) -> bool:
        """Whether `event` may go now (then it counts as sent). Call with the lock held."""
        if event not in self._wanted.get(prediction_id, ()):
            return False
        now = time.monotonic()
        if now - self._sent_at.get((prediction_id, event), -EVERY_S) < EVERY_S:
            return False
        self._sent_at[(prediction_id, event)] = now
        return True

    def output_chunks(self, chunks: Mapping[str, Any]) -> None:
        """New chunks (prediction id -> chunk) from the running model. Never blocks it. The
        event is written only while the attempt watched still runs the prediction."""
        due: list[tuple[str, int, Any]] = []
        with self._lock:
            for prediction_id, chunk in chunks.items():
                if WebhookEvent.OUTPUT not in self._wanted.get(prediction_id, ()):
                    continue
                so_far = self._chunks.setdefault(prediction_id, [])
                so_far.append(chunk)
                if self._due(prediction_id, WebhookEvent.OUTPUT):
                    text = all(isinstance(part, str) for part in so_far)
                    output = "".join(so_far) if text else list(so_far)
                    due.append((prediction_id, self._attempts[prediction_id], output))
        for prediction_id, attempt, output in due:
            self._writer.submit(_add_output, prediction_id, attempt, output)

    def record(self, session: Session, events: Iterable[tuple[str, int, str, Any]]) -> None:
        """In the transaction recording these events (prediction id, attempt, "output" or
        "logs", value)."""
        if not self._wanted:  # no webhook of this process wants progress events: nothing to lock
            return
        with self._lock:
            due = [(p, WebhookEvent(e)) for p, _, e, _ in events if self._due(p, e)]
        for prediction_id, event in due:
            webhook_deliveries.add_recorded(session, prediction_id=prediction_id, event=event)

    def close(self) -> None:
        self._writer.shutdown()


def _add_output(prediction_id: str, attempt: int, output: Any) -> None:
    try:
        with session_scope() as session:
            webhook_deliveries.add_streamed_output(
                session, prediction_id=prediction_id, attempt=attempt, output=output
            )
    except Exception:  # a lost progress event is not worth failing anything for
        log.warning("could not write an output webhook for %s", prediction_id, exc_info=True)
