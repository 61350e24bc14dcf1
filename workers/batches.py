"""Running one batch: claim its predictions, run them in one pass, record each one's outcome.

Each prediction keeps its own fate: an input the model rejects fails only itself, and a batch
that raises (out of memory, or one input crashing the model) is split in halves until the
culprit runs alone. Recording happens on its own thread, so the next batch computes while
the last one is written.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from db.repositories import predictions
from db.repositories.predictions import Claim
from db.session import session_scope
from db.storable import unstorable
from db.tables import ModelVersion, PredictionStatus
from models.base import PredictionError, Predictor, is_out_of_memory
from models.registry import UnknownModelType
from models.weights import WeightsNotFound
from workers import metrics, runtime
from workers.batcher import Batcher, Pending

log = logging.getLogger(__name__)

PROCESSING = (PredictionStatus.PROCESSING,)
# Failures that say something about the input or the version, not about Quern: shown as is.
READABLE = (PredictionError, UnknownModelType, WeightsNotFound)

_recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
_batchers: dict[str, Batcher[str]] = {}
_batchers_lock = threading.Lock()


@dataclass(frozen=True)
class Outcome:
    output: Any = None
    error: str | None = None
    predict_time: float = 0.0
    batch_size: int = 0


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


def predict_isolating(
    predictor: Predictor, inputs: list[dict[str, Any]], model_type: str
) -> list[Outcome]:
    """One outcome per input. A batch that raises is split in halves and each half retried."""
    started = time.perf_counter()
    try:
        outputs = predictor.predict_batch(inputs)
        if len(outputs) != len(inputs):
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(inputs)}")
    except Exception as exc:
        if len(inputs) > 1:
            reason = "out of memory" if is_out_of_memory(exc) else describe(exc)
            log.warning("a batch of %d failed (%s); splitting it in halves", len(inputs), reason)
            half = len(inputs) // 2
            return predict_isolating(predictor, inputs[:half], model_type) + predict_isolating(
                predictor, inputs[half:], model_type
            )
        if not isinstance(exc, READABLE):
            log.exception("the model failed on its own input")
        return [Outcome(error=describe(exc), predict_time=time.perf_counter() - started)]
    elapsed = time.perf_counter() - started
    metrics.BATCH_SIZE.labels(model_type).observe(len(inputs))
    metrics.PREDICT_SECONDS.labels(model_type).observe(elapsed)
    return [
        Outcome(error=str(output), predict_time=elapsed, batch_size=len(inputs))
        if isinstance(output, PredictionError)
        else Outcome(output=output, predict_time=elapsed, batch_size=len(inputs))
        for output in outputs
    ]


def run_batch(version: ModelVersion, batch: list[Pending[str]]) -> None:
    """Claim, predict with no database connection held, and hand the outcomes to the recorder."""
    ids = list(dict.fromkeys(pending.item for pending in batch))  # a duplicate delivery
    with session_scope() as session:
        claims = predictions.claim(session, ids=ids)
    claimed = {claim.id for claim in claims}
    for pending in batch:
        if pending.item not in claimed:
            # Running elsewhere, finished or canceled: a duplicate delivery is a no-op.
            log.info("prediction %s is not startable; delivery ignored", pending.item)
            pending.future.set_result(None)
    waiting = [pending for pending in batch if pending.item in claimed]
    if not claims:
        return

    notes: list[str] = []
    try:
        loaded, just_loaded = runtime.get_predictor(version)
    except Exception as exc:
        if not isinstance(exc, READABLE):
            log.exception("could not load version %s", version.id)
        outcomes = [Outcome(error=describe(exc))] * len(claims)
    else:
        if just_loaded:
            notes.append(f"Loaded {version.model_type} model in {loaded.load_seconds:.2f}s")
        with runtime.compute_lock:
            inputs = [claim.input for claim in claims]
            outcomes = predict_isolating(loaded.predictor, inputs, version.model_type)
    future = _recorder.submit(record, claims, outcomes, notes)

    def resolve(_: object) -> None:
        error = future.exception()
        for pending in waiting:
            if error is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(error)

    future.add_done_callback(resolve)


def record(claims: list[Claim], outcomes: list[Outcome], notes: list[str]) -> None:
    """Write every outcome in one transaction; a prediction canceled meanwhile keeps `canceled`."""
    with session_scope() as session:
        for claim, outcome in zip(claims, outcomes, strict=True):
            logs = list(notes)
            error = outcome.error
            if error is None:
                logs.append(
                    f"Predicted in {outcome.predict_time:.3f}s (batch of {outcome.batch_size})"
                )
                bad_output = unstorable(outcome.output, "output")
                if bad_output:
                    path, reason = bad_output[0]
                    error = f"The model returned an unstorable value at {path}: {reason}"
            values: dict[str, Any] = {"logs": "\n".join(logs)}
            if error is None:
                values |= {
                    "output": outcome.output,
                    "metrics": {
                        "predict_time": round(outcome.predict_time, 6),
                        "batch_size": outcome.batch_size,
                    },
                }
            else:
                values["error"] = error.replace("\x00", "\\0")  # a message may hold anything
            recorded = predictions.update_status(
                session,
                id=claim.id,
                from_statuses=PROCESSING,
                status=PredictionStatus.FAILED if error else PredictionStatus.SUCCEEDED,
                **values,
            )
            if not recorded:
                log.info("prediction %s was canceled while running; outcome discarded", claim.id)
