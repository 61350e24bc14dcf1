"""Running one batch: claim its predictions, run them in one pass, hand the outcomes on.

Each prediction keeps its own fate: an input the model rejects fails only itself, and a batch
that raises (out of memory, or one input crashing the model) is split in halves until the
culprit runs alone. Recording (workers/recording.py) happens on its own thread, so the next
batch computes while the last one is written. Output chunks a model emits while it runs go
out as events (workers/events.py) as they come.
"""

import dataclasses
import json
import logging
import math
import numbers
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from common import log_format
from db.file_inputs import file_fields, fixed_content
from db.repositories import predictions
from db.repositories.predictions import Claim
from db.session import session_scope
from db.tables import ModelVersion
from models.base import (
    Metered,
    PredictionError,
    Predictor,
    is_out_of_memory,
    output_sink,
    stop_check,
)
from models.registry import UnknownModelType, cache_key
from models.weights import WeightsNotFound
from workers import file_inputs, metrics
from workers.dynamic_batcher import Pending
from workers.recording import Outcome, record

if TYPE_CHECKING:  # the runtime builds the batchers that run batches here
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# Failures that say something about the input or the version, not about Quern: shown as is.
READABLE = (PredictionError, UnknownModelType, WeightsNotFound)


def describe(exc: BaseException) -> str:
    if isinstance(exc, READABLE):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def predict_isolating(
    runtime: "WorkerRuntime", predictor: Predictor, claims: list[Claim], model_type: str
) -> list[Outcome]:
    """One outcome per claim. A batch that raises is split in halves and each half retried."""
    started = time.perf_counter()
    streamed: set[int] = set()
    cut: set[int] = set()  # lost a chunk: send no more, so what the client has is a prefix

    def publish(chunks: Mapping[int, Any]) -> None:
        """Indices are positions in this call's `claims` (a half, when the batch was split)."""
        streamed.update(chunks)
        runtime.webhook_progress.output_chunks({claims[i].id: chunks[i] for i in chunks})
        sending = [i for i in chunks if i not in cut]
        published = [
            (claims[i].id, claims[i].attempts, "output", json.dumps(chunks[i])) for i in sending
        ]
        if not runtime.events.publish_many(published):
            cut.update(sending)

    try:
        with (
            stop_check(lambda: [runtime.leases.stop_reason(claim) is not None for claim in claims]),
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
            first = predict_isolating(runtime, predictor, claims[:half], model_type)
            return first + predict_isolating(runtime, predictor, claims[half:], model_type)
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
        _outcome(output, elapsed, len(claims), i in streamed) for i, output in enumerate(outputs)
    ]


def predict_once_each(
    runtime: "WorkerRuntime", predictor: Predictor, claims: list[Claim], version: ModelVersion
) -> list[Outcome]:
    """`predict_isolating` (under the compute lock) with the inputs' files made local first
    (workers/file_inputs.py: an input whose file cannot be had fails alone), computing
    identical inputs once when the version caches results (single flight: the result cache
    cannot answer requests that arrive together). A repeat shares the first one's outcome; its
    output is published whole, not streamed."""
    first: dict[bytes, int] = {}
    computed_by = list(range(len(claims)))
    fields = file_fields(version.input_schema)
    if version.cache_enabled:
        for i, claim in enumerate(claims):
            key = cache_key(version.model_type, claim.input)
            if key is not None and fixed_content(claim.input, fields):
                computed_by[i] = first.setdefault(key, i)
    computing = [claims[i] for i in sorted(set(computed_by))]
    if len(computing) < len(claims):
        log.info("%d of %d inputs repeat another in the batch", len(claims) - len(computing),
                 len(claims))  # fmt: skip
    with (
        file_inputs.localized(computing, fields, runtime.settings) as (ready, failed),
        runtime.compute_lock,
    ):
        ran = predict_isolating(runtime, predictor, ready, version.model_type) if ready else []
    outcomes = dict(zip([claim.id for claim in ready], ran, strict=True))
    outcomes |= {id: Outcome(error=error) for id, error in failed.items()}
    return [
        outcomes[claims[j].id] if i == j
        else dataclasses.replace(outcomes[claims[j].id], streamed=False)
        for i, j in enumerate(computed_by)
    ]  # fmt: skip


def _outcome(output: Any, elapsed: float, batch_size: int, streamed: bool) -> Outcome:
    if isinstance(output, PredictionError):
        return Outcome(error=str(output), predict_time=elapsed, batch_size=batch_size)
    measured: dict[str, int | float] = {}
    if isinstance(output, Metered):
        output, measured = output.output, _numbers(output.metrics)
    return Outcome(
        output=output,
        predict_time=elapsed,
        batch_size=batch_size,
        streamed=streamed,
        measured=measured,
    )


def run_batch(runtime: "WorkerRuntime", version: ModelVersion, batch: list[Pending[str]]) -> None:
    """`_run_batch`, its log lines (and the recorder's) naming the batch's predictions."""
    with log_format.predictions_context(list(dict.fromkeys(p.item for p in batch))):
        _run_batch(runtime, version, batch)


def _run_batch(runtime: "WorkerRuntime", version: ModelVersion, batch: list[Pending[str]]) -> None:
    """Claim, predict with no database connection held, and hand the outcomes to the recorder."""
    ids = list(dict.fromkeys(pending.item for pending in batch))  # a duplicate delivery
    with session_scope() as session:
        claims = predictions.claim(session, ids=ids, lease_s=runtime.settings.lease_s)
    runtime.webhook_progress.watch(claims)
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
    runtime.leases.add(claims, version.run_timeout_s)

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
        outcomes = predict_once_each(runtime, loaded.predictor, claims, version)
        metrics.observe_gpu_memory()
    hand_over(runtime, version, claims, outcomes, notes, waiting)


def hand_over(
    runtime: "WorkerRuntime",
    version: ModelVersion,
    claims: list[Claim],
    outcomes: list[Outcome],
    notes: list[str],
    waiting: list[Pending[str]],
) -> None:
    """Record the outcomes on the recorder's thread; then the claims' leases end and the task
    threads `waiting` on them go on (and ack their messages)."""
    model = runtime.model_ref(version.id)
    future = runtime.recorder.submit(record, runtime, claims, outcomes, notes, model)

    def resolve(_: object) -> None:
        runtime.leases.remove(claims)
        error = future.exception()
        for pending in waiting:
            if error is None:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(error)

    future.add_done_callback(resolve)


def _numbers(metrics: Mapping[str, Any]) -> dict[str, int | float]:
    """A model's measurements as JSON numbers (numpy's too); anything else is left out."""
    kept: dict[str, int | float] = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(name, str):
            continue
        if isinstance(value, numbers.Integral):
            kept[name] = int(value)
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            kept[name] = float(value)
    return kept
