"""Recording a batch's outcomes: one UPDATE for the whole batch, one Redis pipeline for its
events, one transaction.

Only the attempt that claimed a prediction may record it (the UPDATE is fenced by attempt
number), and a prediction canceled meanwhile keeps `canceled` and gets its logs. Events go out
before the commit: the API ends a prediction's event stream once it sees the final status,
so the stream must already hold everything by then. While PostgreSQL is unreachable the
recorder keeps trying for up to a lease: the batch's leases stay held (the heartbeat renews
them once it is back), so a short outage costs a wait, not a second run.
"""

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from common import backoff
from db.repositories import predictions
from db.repositories.predictions import Claim, Fate
from db.session import session_scope
from db.tables import PredictionStatus
from workers import events, files, metrics
from workers.leases import CANCELED, LOST

if TYPE_CHECKING:  # the runtime runs batches, which hand their outcomes here
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What the model made of one claim."""

    output: Any = None
    error: str | None = None
    transient: bool = False  # worth another attempt (out of memory even alone)
    predict_time: float = 0.0
    batch_size: int = 0
    streamed: bool = False  # the model emitted its output in chunks as it ran
    # What the model measured of this input (models.base.Metered): token counts.
    measured: dict[str, int | float] = field(default_factory=dict)


RETRY_FIRST_S = 0.5
RETRY_MOST_S = 5.0


def record(
    runtime: "WorkerRuntime",
    claims: list[Claim],
    outcomes: list[Outcome],
    notes: list[str],
    model: str,
) -> None:
    """`record_once`, again and again while the database is unreachable, for up to a lease."""
    give_up_at = time.monotonic() + runtime.settings.lease_s
    delay = RETRY_FIRST_S
    while True:
        try:
            return record_once(runtime, claims, outcomes, notes, model)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > give_up_at:
                raise
            log.warning(
                "could not record a batch of %d (database unreachable: %s); retrying in %.1fs",
                len(claims), type(exc.orig).__name__, delay,
            )  # fmt: skip
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MOST_S)


def record_once(
    runtime: "WorkerRuntime",
    claims: list[Claim],
    outcomes: list[Outcome],
    notes: list[str],
    model: str,
) -> None:
    """Write every outcome in one statement and one transaction, publish the events of those
    written, then count the final fates."""
    with session_scope() as session:
        pairs = zip(claims, outcomes, strict=True)
        fates = [_fate(runtime, session, claim, outcome, notes) for claim, outcome in pairs]
        applied = predictions.record(session, fates=[fate for fate, _ in fates])
        published: list[events.Event] = []
        for fate, output_event in fates:
            if fate.id not in applied:
                log.info("prediction %s was taken over or finished; outcome discarded", fate.id)
                continue
            if applied[fate.id] and output_event is not None:
                published.append(output_event)
            logs = json.dumps(fate.logs[:-1])  # lines, not ended
            published.append((fate.id, fate.attempts, "logs", logs))
        # An attempt's last entries: a retry's next attempt keeps its stream a day again.
        runtime.events.publish_many(published, events.FINISHED_TTL_S)
        runtime.webhook_progress.record(session, published)
    runtime.webhook_progress.forget(claim.id for claim in claims)
    counted = Counter(fate.status for fate, _ in fates if applied.get(fate.id))
    for status, count in counted.items():
        if status == PredictionStatus.STARTING:
            metrics.RETRIES.labels(model).inc(count)
        else:
            metrics.FINISHED.labels(model, status).inc(count)


def _fate(
    runtime: "WorkerRuntime", session: Session, claim: Claim, outcome: Outcome, notes: list[str]
) -> tuple[Fate, events.Event | None]:
    """What to write for one claim, and the output event to publish if it is written (the
    whole output of a model that did not stream)."""
    settings = runtime.settings
    logs = list(notes)
    error = outcome.error
    output = None
    if error is None:
        logs.append(f"Predicted in {outcome.predict_time:.3f}s (batch of {outcome.batch_size})")
        output = files.encode(outcome.output)
        if output is None:  # files, or something to explain: the slow path
            stored, error = files.store(session, claim=claim, output=outcome.output)
            output = None if error else _json(stored)
            if output is None and error is None:
                error = f"The model returned a value that is not JSON: {type(stored).__name__}"
    if error is not None:
        error = error.replace("\x00", "\\0")  # a model's message may hold anything

    def fate(status: str | None, **values: Any) -> Fate:
        return Fate(claim.id, claim.attempts, status, _lines(logs), **values)

    stop = runtime.leases.stop_reason(claim)
    if stop == CANCELED:
        logs.append("Canceled while running: stopped at the next step")
        return fate(None), None  # the API canceled (and counted) it
    if stop == LOST:
        return fate(None), None  # another attempt owns it: the write is fenced out anyway
    if stop is not None:
        logs.append(f"Canceled: {stop}")
        return fate(PredictionStatus.CANCELED, output=output, error=stop), None
    if outcome.transient:
        if claim.attempts < settings.max_attempts:
            # Full jitter (common/backoff.py), as requeue_lost's SQL for an attempt lost with
            # its worker.
            delay = backoff.retry_delay(claim.attempts, settings.retry_base_s, settings.retry_cap_s)
            logs.append(f"Attempt {claim.attempts} failed ({error}); retrying in {delay:.2f}s")
            return fate(PredictionStatus.STARTING, retry_in_s=delay), None
        error = f"Gave up after {claim.attempts} attempts: {error}"
    if error is not None or output is None:
        return fate(PredictionStatus.FAILED, error=error), None
    measured = outcome.measured | {
        "predict_time": round(outcome.predict_time, 6),
        "batch_size": outcome.batch_size,
    }
    succeeded = fate(PredictionStatus.SUCCEEDED, output=output, metrics=json.dumps(measured))
    return succeeded, None if outcome.streamed else (claim.id, claim.attempts, "output", output)


def _json(value: Any) -> str | None:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return None


def _lines(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
