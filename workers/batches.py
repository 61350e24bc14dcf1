"""Running one batch: claim its predictions, run them in one pass, record each one's outcome.

Each prediction keeps its own fate: an input the model rejects fails only itself, and a batch
that raises (out of memory, or one input crashing the model) is split in halves until the
culprit runs alone. Recording happens on its own thread, so the next batch computes while
the last one is written. Output chunks a model emits while it runs, and then each attempt's
logs (and the whole output of a model that did not stream), go out as events (workers/events.py).
"""

import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from db import log_format
from db.repositories import predictions
from db.repositories.predictions import Claim
from db.session import session_scope
from db.tables import ModelVersion, PredictionStatus
from models.base import PredictionError, Predictor, is_out_of_memory, output_sink, stop_check
from models.registry import UnknownModelType
from models.weights import WeightsNotFound
from workers import events, files, metrics, running, runtime
from workers.batcher import Batcher, Pending
from workers.settings import get_worker_settings
from workers.webhooks import progress as webhook_progress

log = logging.getLogger(__name__)

PROCESSING = (PredictionStatus.PROCESSING,)
# Failures that say something about the input or the version, not about Quern: shown as is.
READABLE = (PredictionError, UnknownModelType, WeightsNotFound)

# Its lines carry the ids of the batch that submitted the work.
_recorder = log_format.ContextThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
_batchers: dict[str, Batcher[str]] = {}
_batchers_lock = threading.Lock()


@dataclass(frozen=True)
class Outcome:
    output: Any = None
    error: str | None = None
    transient: bool = False  # worth another attempt (out of memory even alone)
    predict_time: float = 0.0
    batch_size: int = 0
    streamed: bool = False  # the model emitted its output in chunks as it ran


def batcher_for(version_id: str) -> Batcher[str]:
    """The batcher gathering prediction ids of `version_id`, sized by the version's limits."""
    batcher = _batchers.get(version_id)
    if batcher is None:
        version = runtime.get_version(version_id)
        with _batchers_lock:
            batcher = _batchers.get(version_id)
            if batcher is None:
                batcher = _batchers[version_id] = Batcher(
                    version_id,
                    lambda batch: run_batch(version, batch),
                    max_size=version.max_batch_size,
                    max_wait_s=version.max_batch_wait_ms / 1000,
                )
    return batcher


def describe(exc: BaseException) -> str:
    if isinstance(exc, READABLE):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def predict_isolating(predictor: Predictor, claims: list[Claim], model_type: str) -> list[Outcome]:
    """One outcome per claim. A batch that raises is split in halves and each half retried."""
    started = time.perf_counter()
    streamed: set[int] = set()
    cut: set[int] = set()  # lost a chunk: send no more, so what the client has is a prefix

    def publish(chunks: Mapping[int, Any]) -> None:
        """Indices are positions in this call's `claims` (a half, when the batch was split)."""
        streamed.update(chunks)
        webhook_progress.output_chunks({claims[i].id: chunks[i] for i in chunks})
        sending = [i for i in chunks if i not in cut]
        if not events.publish_many([(claims[i].id, "output", chunks[i]) for i in sending]):
            cut.update(sending)

    try:
        with (
            stop_check(lambda: [running.stop_reason(claim) is not None for claim in claims]),
            output_sink(publish),
        ):
            outputs = predictor.predict_batch([claim.input for claim in claims])
        if len(outputs) != len(claims):
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(claims)}")
    except Exception as exc:
        if len(claims) > 1:
            reason = "out of memory" if is_out_of_memory(exc) else describe(exc)
            log.warning("a batch of %d failed (%s); splitting it in halves", len(claims), reason)
            half = len(claims) // 2
            return predict_isolating(predictor, claims[:half], model_type) + predict_isolating(
                predictor, claims[half:], model_type
            )
        transient = is_out_of_memory(exc)
        if not isinstance(exc, READABLE) and not transient:
            log.exception(
                "the model failed on its own input", extra={"prediction_id": claims[0].id}
            )
        elapsed = time.perf_counter() - started
        return [Outcome(error=describe(exc), transient=transient, predict_time=elapsed)]
    elapsed = time.perf_counter() - started
    metrics.BATCH_SIZE.labels(model_type).observe(len(claims))
    metrics.PREDICT_SECONDS.labels(model_type).observe(elapsed)
    return [
        Outcome(error=str(output), predict_time=elapsed, batch_size=len(claims))
        if isinstance(output, PredictionError)
        else Outcome(
            output=output, predict_time=elapsed, batch_size=len(claims), streamed=i in streamed
        )
        for i, output in enumerate(outputs)
    ]


def run_batch(version: ModelVersion, batch: list[Pending[str]]) -> None:
    """`_run_batch`, its log lines (and the recorder's) naming the batch's predictions."""
    with log_format.predictions_context(list(dict.fromkeys(p.item for p in batch))):
        _run_batch(version, batch)


def _run_batch(version: ModelVersion, batch: list[Pending[str]]) -> None:
    """Claim, predict with no database connection held, and hand the outcomes to the recorder."""
    settings = get_worker_settings()
    ids = list(dict.fromkeys(pending.item for pending in batch))  # a duplicate delivery
    with session_scope() as session:
        claims = predictions.claim(session, ids=ids, lease_s=settings.lease_s)
        webhook_progress.watch(session, [claim.id for claim in claims])
    claimed = {claim.id for claim in claims}
    for pending in batch:
        if pending.item not in claimed:
            # Running elsewhere, finished, canceled or waiting out a retry delay: a duplicate
            # delivery is a no-op.
            log.info("prediction %s is not startable; delivery ignored", pending.item)
            pending.future.set_result(None)
    waiting = [pending for pending in batch if pending.item in claimed]
    if not claims:
        return
    running.add(claims, version.run_timeout_s)

    notes: list[str] = []
    try:
        loaded, just_loaded = runtime.get_predictor(version)
    except Exception as exc:
        if not isinstance(exc, READABLE):
            log.exception("could not load version %s", version.id)
        # Out of memory even with the device to itself: worth another attempt later.
        outcomes = [Outcome(error=describe(exc), transient=is_out_of_memory(exc))] * len(claims)
    else:
        if just_loaded:
            notes.append(f"Loaded {version.model_type} model in {loaded.load_seconds:.2f}s")
        with runtime.compute_lock:
            outcomes = predict_isolating(loaded.predictor, claims, version.model_type)
        metrics.observe_gpu_memory()
    future = _recorder.submit(record, claims, outcomes, notes, runtime.model_ref(version.id))

    def resolve(_: object) -> None:
        running.remove(claims)
        error = future.exception()
        for pending in waiting:
            if error is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(error)

    future.add_done_callback(resolve)


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))] (AWS's backoff advice)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))  # noqa: S311


def record(claims: list[Claim], outcomes: list[Outcome], notes: list[str], model: str) -> None:
    """Write every outcome in one transaction. Only the attempt that claimed a prediction may
    record it, and a prediction canceled meanwhile keeps `canceled` (and gets its logs)."""
    fates: list[str] = []
    with session_scope() as session:
        published: list[events.Event] = []
        for claim, outcome in zip(claims, outcomes, strict=True):
            claim_events, fate = _record_one(session, claim, outcome, notes)
            published += claim_events
            fates += [fate] if fate else []
        # Still uncommitted: the API ends a prediction's event stream once it sees the final
        # status, so the stream must already hold everything by then.
        events.publish_many(published)
        webhook_progress.record(session, published)
    webhook_progress.forget(claim.id for claim in claims)
    for fate in fates:  # counted once committed
        if fate == "retried":
            metrics.RETRIES.labels(model).inc()
        else:
            metrics.FINISHED.labels(model, fate).inc()


def _record_one(
    session: Session, claim: Claim, outcome: Outcome, notes: list[str]
) -> tuple[list[events.Event], str | None]:
    """Write one outcome; return the events to publish for it, and its fate for the metrics
    (a final status, `retried`, or None when nothing changed)."""
    settings = get_worker_settings()
    logs = list(notes)
    error = outcome.error
    output = None
    if error is None:
        logs.append(f"Predicted in {outcome.predict_time:.3f}s (batch of {outcome.batch_size})")
        output, error = files.store(session, claim=claim, output=outcome.output)
    if error is not None:
        error = error.replace("\x00", "\\0")  # a model's message may hold anything
    common: dict[str, Any] = {
        "id": claim.id,
        "from_statuses": PROCESSING,
        "attempts": claim.attempts,
    }

    stop = running.stop_reason(claim)
    if stop == "canceled":
        logs.append("Canceled while running: stopped at the next step")
        predictions.add_logs(session, id=claim.id, logs=_lines(logs))
        return [_logs_event(claim, logs)], None  # the API canceled (and counted) it
    if stop is not None:
        logs.append(f"Canceled: {stop}")
        predictions.update_status(
            session, **common, status=PredictionStatus.CANCELED, output=output, error=stop,
            append_logs=_lines(logs),
        )  # fmt: skip
        return [_logs_event(claim, logs)], PredictionStatus.CANCELED
    if outcome.transient:
        if claim.attempts < settings.max_attempts:
            delay = retry_delay(claim.attempts, settings.retry_base_s, settings.retry_cap_s)
            logs.append(f"Attempt {claim.attempts} failed ({error}); retrying in {delay:.2f}s")
            predictions.retry_later(session, claim=claim, delay_s=delay, logs=_lines(logs))
            return [_logs_event(claim, logs)], "retried"
        error = f"Gave up after {claim.attempts} attempts: {error}"
    values: dict[str, Any] = {"append_logs": _lines(logs)}
    if error is None:
        values |= {
            "output": output,
            "metrics": {
                "predict_time": round(outcome.predict_time, 6),
                "batch_size": outcome.batch_size,
            },
        }
    else:
        values["error"] = error
    status = PredictionStatus.FAILED if error else PredictionStatus.SUCCEEDED
    if not predictions.update_status(session, **common, status=status, **values):
        log.info("prediction %s was canceled or taken over; outcome discarded", claim.id)
        return [], None
    if error is None and not outcome.streamed:
        return [(claim.id, "output", output), _logs_event(claim, logs)], status
    return [_logs_event(claim, logs)], status


def _lines(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _logs_event(claim: Claim, lines: list[str]) -> events.Event:
    return (claim.id, "logs", "\n".join(lines))
