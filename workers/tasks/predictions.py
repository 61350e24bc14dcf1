"""Running a prediction: claim the row, run the model with no DB connection held, write back."""

import logging
import time
from typing import Any

from celery import Task

from db.repositories import predictions
from db.session import session_scope
from db.storable import unstorable
from db.tables import PredictionStatus
from models.base import PredictionError
from models.registry import UnknownModelType
from models.weights import WeightsNotFound
from workers import runtime
from workers.celery_app import RUN_PREDICTION_TASK, app

log = logging.getLogger(__name__)

PROCESSING = (PredictionStatus.PROCESSING,)


def _fail(prediction_id: str, error: str, logs: str) -> None:
    error = error.replace("\x00", "\\0")  # a model's message may hold anything
    with session_scope() as session:
        predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=PROCESSING,
            status=PredictionStatus.FAILED,
            error=error,
            logs=logs,
        )


@app.task(name=RUN_PREDICTION_TASK, bind=True)  # type: ignore[untyped-decorator]
def run_prediction(self: Task[Any, Any], prediction_id: str) -> None:
    with session_scope() as session:
        claim = predictions.claim(session, id=prediction_id)
    if claim is None:
        # Already running elsewhere, finished or canceled: a duplicate delivery is a no-op.
        log.info("prediction %s is not startable; delivery ignored", prediction_id)
        return

    logs: list[str] = []
    try:
        loaded, just_loaded = runtime.get_predictor(claim.version)
        if just_loaded:
            logs.append(f"Loaded {claim.version.model_type} model in {loaded.load_seconds:.2f}s")
        started = time.perf_counter()
        output = loaded.predictor.predict_batch([claim.input])[0]
        predict_time = time.perf_counter() - started
    except (PredictionError, UnknownModelType, WeightsNotFound) as exc:
        _fail(prediction_id, str(exc), "\n".join(logs))
        return
    except Exception as exc:
        log.exception("prediction %s failed", prediction_id)
        _fail(prediction_id, f"{type(exc).__name__}: {exc}", "\n".join(logs))
        return
    logs.append(f"Predicted in {predict_time:.3f}s")
    bad_output = unstorable(output, "output")
    if bad_output:
        path, reason = bad_output[0]
        _fail(
            prediction_id,
            f"The model returned an unstorable value at {path}: {reason}",
            "\n".join(logs),
        )
        return

    with session_scope() as session:
        recorded = predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=PROCESSING,
            status=PredictionStatus.SUCCEEDED,
            output=output,
            logs="\n".join(logs),
            metrics={"predict_time": round(predict_time, 6), "batch_size": 1},
        )
    if not recorded:
        log.info("prediction %s was canceled while running; output discarded", prediction_id)
