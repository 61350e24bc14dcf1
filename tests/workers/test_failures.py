"""Failure classes, deadlines and cancellation, on real rows with stand-in predictors.

Transient failures go back to the queue with a full-jitter delay kept in PostgreSQL; permanent
ones fail at once; deadlines abort or cancel; a cancel reaches a running model between steps.
"""

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from common import backoff
from db.repositories import predictions
from db.repositories.predictions import UNFINISHED
from db.session import session_scope
from db.tables import PredictionStatus
from models.base import stop_requested
from tests.support.helpers import (
    create_prediction_row,
    create_version,
    kill_listeners,
    listening_backends,
)
from tests.support.processes import wait_until
from tests.workers.stubs import Recording, StandInRuntime, load, run_together
from workers import sweeper
from workers.celery_app import app
from workers.leases import CANCELED, Leases
from workers.settings import WorkerSettings, get_worker_settings


class OutOfMemoryTwice(Recording):
    """Fails as if out of GPU memory on its first two calls, then works."""

    failures = 2

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        if self.failures:
            self.failures -= 1
            raise MemoryError("CUDA out of memory (stand-in)")
        return super().predict_batch(inputs)


class Raises(Recording):
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        raise ValueError("the model's own bug")


class Stepper(Recording):
    """Works in 10 ms steps (like tokens), up to 300, stopping any input the worker flags."""

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        self.batches.append([item["text"] for item in inputs])
        steps = [0] * len(inputs)
        for _ in range(300):
            flags = stop_requested() or [False] * len(inputs)
            if all(flags):
                break
            steps = [n if flag else n + 1 for n, flag in zip(steps, flags, strict=True)]
            time.sleep(0.01)
        return [[float(n)] for n in steps]


@pytest.fixture
def broker(settings: WorkerSettings) -> Iterator[redis.Redis]:
    """The sweeper's client of the broker (Redis db 14 in tests: nobody consumes there)."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.fixture
def settings() -> WorkerSettings:
    """This test's worker settings (its runtime's too), with retry delays short enough."""
    return get_worker_settings().model_copy(update={"retry_base_s": 0.2, "retry_cap_s": 1.0})


def wait_out_retry_delay(prediction_id: str) -> None:
    prediction = load(prediction_id)
    assert prediction.next_attempt_at is not None
    time.sleep(max(0.0, (prediction.next_attempt_at - datetime.now(UTC)).total_seconds()) + 0.05)


def test_a_transient_failure_retries_with_backoff_until_it_succeeds(
    runtime: StandInRuntime, settings: WorkerSettings, broker: redis.Redis
) -> None:
    runtime.use(OutOfMemoryTwice)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    prediction_id = create_prediction_row(version)

    (first,) = run_together(runtime, version, [prediction_id])
    assert (first.status, first.attempts, first.enqueued_at) == ("starting", 1, None)
    assert first.next_attempt_at is not None and "Attempt 1 failed" in first.logs
    wait_out_retry_delay(prediction_id)
    assert (
        sweeper.sweep(app, settings, broker) >= 1
    )  # publishes it again (Redis db 14: nobody consumes)
    (second,) = run_together(runtime, version, [prediction_id])
    assert (second.status, second.attempts) == ("starting", 2)
    wait_out_retry_delay(prediction_id)
    (done,) = run_together(runtime, version, [prediction_id])

    assert (done.status, done.attempts, done.output) == ("succeeded", 3, [1.0])
    assert "Attempt 1 failed (MemoryError: CUDA out of memory" in done.logs
    assert "Attempt 2 failed" in done.logs and done.error is None


def test_a_delivery_during_the_retry_delay_does_not_start_the_prediction(
    monkeypatch: pytest.MonkeyPatch, runtime: StandInRuntime
) -> None:
    monkeypatch.setattr(backoff, "retry_delay", lambda attempt, base, cap, **_: 30.0)
    predictor = runtime.use(OutOfMemoryTwice)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    prediction_id = create_prediction_row(version)
    run_together(runtime, version, [prediction_id])
    (early,) = run_together(runtime, version, [prediction_id])  # e.g. a duplicate message
    assert (early.status, early.attempts, predictor.failures) == ("starting", 1, 1)


def test_retry_delays_use_full_jitter_under_a_growing_capped_ceiling() -> None:
    random.seed(7)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 30.0)):
        delays = [backoff.retry_delay(attempt, 1.0, 30.0) for _ in range(2000)]
        assert 0 <= min(delays) < ceiling * 0.05 and ceiling * 0.95 < max(delays) <= ceiling


def test_a_transient_failure_gives_up_after_max_attempts(
    runtime: StandInRuntime, settings: WorkerSettings
) -> None:
    settings.max_attempts = 2
    runtime.use(OutOfMemoryTwice)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    prediction_id = create_prediction_row(version)
    run_together(runtime, version, [prediction_id])
    wait_out_retry_delay(prediction_id)
    (done,) = run_together(runtime, version, [prediction_id])
    assert (done.status, done.attempts) == ("failed", 2)
    assert done.error.startswith("Gave up after 2 attempts: MemoryError")


def test_a_permanent_failure_fails_at_once_with_one_attempt(runtime: StandInRuntime) -> None:
    runtime.use(Raises)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    (done,) = run_together(runtime, version, [create_prediction_row(version)])
    assert (done.status, done.attempts, done.error) == (
        "failed", 1, "ValueError: the model's own bug",
    )  # fmt: skip


def test_cancel_before_start_never_calls_the_model(runtime: StandInRuntime) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    prediction_id = create_prediction_row(version)
    with session_scope() as session:
        predictions.update_status(
            session, id=prediction_id, from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )
    (done,) = run_together(runtime, version, [prediction_id])
    assert predictor.batches == [] and done.status == "canceled" and done.attempts == 0


def test_a_deadline_passed_in_the_queue_aborts_without_running(
    runtime: StandInRuntime, settings: WorkerSettings, broker: redis.Redis
) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    past = datetime.now(UTC) - timedelta(seconds=1)
    late, on_time = create_prediction_row(version, deadline=past), create_prediction_row(version)
    swept = create_prediction_row(version, deadline=past)
    sweeper.sweep(app, settings, broker)
    done = run_together(runtime, version, [late, on_time])
    assert [p.status for p in done] == ["aborted", "succeeded"]
    assert predictor.batches == [["x"]] and "deadline" in (done[0].error or "")
    assert load(swept).status == "aborted"


@pytest.fixture
def listening(runtime: StandInRuntime) -> None:
    """The runtime's lease heartbeat and cancel listener, as a worker process starts them."""
    runtime.start_leases()


@pytest.mark.usefixtures("listening")
@pytest.mark.slow  # the other prediction runs its 3 s to the end
def test_cancel_during_a_run_stops_the_model_at_its_next_step(runtime: StandInRuntime) -> None:
    runtime.use(Stepper)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    stopped, kept = create_prediction_row(version), create_prediction_row(version)
    result: list[Any] = []
    runner = threading.Thread(
        target=lambda: result.extend(run_together(runtime, version, [stopped, kept]))
    )
    runner.start()
    wait_until(lambda: load(stopped).status == "processing", 10, "the batch to start")
    time.sleep(0.3)
    with session_scope() as session:  # what POST /v1/predictions/{id}/cancel does
        predictions.update_status(
            session, id=stopped, from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )
    runner.join(timeout=30)
    canceled, finished = result
    assert canceled.status == "canceled" and "Canceled while running" in canceled.logs
    assert canceled.output is None  # terminal stays as the cancel left it
    assert (finished.status, finished.output) == ("succeeded", [300.0])


@pytest.mark.usefixtures("listening")
def test_a_run_over_the_versions_run_timeout_is_canceled(runtime: StandInRuntime) -> None:
    runtime.use(Stepper)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0, run_timeout_s=1)
    started = time.monotonic()
    (done,) = run_together(runtime, version, [create_prediction_row(version)])
    assert time.monotonic() - started < 2.5  # 300 steps would take 3 s
    assert done.status == "canceled" and "run timeout" in (done.error or "")
    assert done.output is not None and 50 < done.output[0] < 300  # the partial output is kept


def test_a_lost_worker_is_detected_by_its_lease_and_the_prediction_requeued(
    runtime: StandInRuntime, settings: WorkerSettings, broker: redis.Redis
) -> None:
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    prediction_id = create_prediction_row(version)
    with session_scope() as session:  # a worker claims it, then dies (no heartbeat)
        predictions.claim(session, ids=[prediction_id], lease_s=0.2)
    time.sleep(0.3)
    sweeper.sweep(app, settings, broker)
    lost = load(prediction_id)
    assert (lost.status, lost.attempts, lost.lease_expires_at) == ("starting", 1, None)
    assert "lost with its worker" in lost.logs

    runtime.use(Recording)
    wait_out_retry_delay(prediction_id)
    (done,) = run_together(runtime, version, [prediction_id])
    assert (done.status, done.attempts) == ("succeeded", 2)


def test_a_lost_worker_on_the_last_attempt_fails_the_prediction(
    settings: WorkerSettings, broker: redis.Redis
) -> None:
    settings.max_attempts = 1
    prediction_id = create_prediction_row()
    with session_scope() as session:
        predictions.claim(session, ids=[prediction_id], lease_s=0.1)
    time.sleep(0.2)
    sweeper.sweep(app, settings, broker)
    done = load(prediction_id)
    assert done.status == "failed" and done.error.startswith("Gave up after 1 attempts")


def test_only_one_sweeper_sweeps_at_a_time(settings: WorkerSettings, broker: redis.Redis) -> None:
    prediction_id = create_prediction_row()
    with session_scope() as session:
        predictions.mark_not_enqueued(session, ids=[prediction_id])
    with session_scope() as other_worker:  # another worker's sweep holds the lock
        other_worker.execute(select(func.pg_advisory_xact_lock(sweeper.SWEEP_LOCK)))
        assert sweeper.sweep(app, settings, broker) == 0
        assert load(prediction_id).enqueued_at is None
    assert sweeper.sweep(app, settings, broker) >= 1
    assert load(prediction_id).enqueued_at is not None


def test_a_cancel_made_while_the_cancel_listener_was_down_is_caught_when_it_reconnects() -> None:
    prediction_id = create_prediction_row()
    with session_scope() as session:
        (claim,) = predictions.claim(session, ids=[prediction_id], lease_s=60)
    leases = Leases()
    leases.add([claim], run_timeout_s=600)
    stopping = threading.Event()
    listening = threading.Thread(target=leases.listen, args=(stopping,), daemon=True)
    listening.start()
    try:
        channel = predictions.STATUS_CHANNEL
        wait_until(lambda: listening_backends(channel), 10, "the cancel listener to connect")
        kill_listeners(channel)  # PostgreSQL drops the connection
        wait_until(lambda: not listening_backends(channel), 10, "the connection to go")
        with session_scope() as session:  # announced while nothing listens (reconnects: >= 1 s)
            predictions.update_status(
                session, id=prediction_id, from_statuses=UNFINISHED,
                status=PredictionStatus.CANCELED,
            )  # fmt: skip
        assert leases.stop_reason(claim) is None
        wait_until(lambda: leases.stop_reason(claim) == CANCELED, 10, "the cancel to be caught")
    finally:
        stopping.set()
        listening.join(timeout=5)
