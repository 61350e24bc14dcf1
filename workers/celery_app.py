"""The Celery app of the workers: every setting here says why it is set.

Redis carries ids only (of predictions and webhook deliveries); PostgreSQL is the source of
truth and results are never stored in Celery. Start with `celery -A workers.celery_app worker
-Q predictions.cpu` (or `predictions.gpu` on a GPU machine; `-Q webhooks` for a worker that
delivers webhooks and runs no model).

This module only configures: it starts no thread. What a worker process starts (its runtime,
metrics server, sweeper or webhook dispatcher) is in workers/lifecycle.py, which the app
imports with its tasks when a worker starts.
"""

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun

from common import log_format
from common.contract import RUN_PREDICTION_TASK, prediction_queue
from common.webhook_guard import get_guard_settings
from db.signed_urls import get_url_signer
from workers import kombu_fixes
from workers.settings import get_worker_settings

settings = get_worker_settings()
get_guard_settings()  # a bad QUERN_WEBHOOK_ALLOWED_NETWORKS stops the worker now, not each delivery
get_url_signer()  # a bad QUERN_SIGNED_URL_* too, not a failed webhook body
kombu_fixes.survive_broker_reconnects()

assert settings.task_time_limit_s < settings.broker_visibility_timeout_s

app = Celery(
    "quern",
    broker=settings.redis_url,
    # Imported when a worker starts, before its worker_init: the tasks, and what builds the
    # process's runtime and starts its threads (configuring the app here starts nothing).
    include=["workers.lifecycle", "workers.tasks.predictions", "workers.tasks.webhooks"],
)
app.conf.update(
    # Ack after the task ran, so a worker that dies mid-prediction leaves the message to be
    # redelivered (at least once). Duplicates are harmless: the claim is a conditional UPDATE.
    task_acks_late=True,
    # With late acks a killed pool child's message would still be acked; requeue it instead.
    task_reject_on_worker_lost=True,
    # Threads, not processes: every task thread of a process hands its prediction to the same
    # in-process batcher (workers/dynamic_batcher.py), and models load once per process. Torch
    # releases the GIL while it computes; cancellation and timeouts are cooperative here.
    worker_pool="threads",
    # Up to this many messages of this process are in flight (running or waiting for a batch),
    # each of up to MAX_IDS_PER_MESSAGE predictions. One-id messages (light load) can reach
    # batches of this size only, so keep it >= max_batch_size; under load a process may hold
    # up to concurrency x MAX_IDS_PER_MESSAGE predictions that other workers cannot take.
    worker_concurrency=settings.concurrency,
    # One reserved message per thread and no more: a message waiting in the prefetch buffer
    # past the visibility timeout would be delivered twice, and reserved work is invisible to
    # other workers. The batch forms from messages already being executed.
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
    # Enforced by the prefork and solo pools only; under threads the run timeout is cooperative.
    task_time_limit=settings.task_time_limit_s,
    # Without this, late-ack tasks run twice after a broker connection loss.
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    # On a cold shutdown (SIGQUIT, or a second SIGTERM), give running batches this long to
    # finish and be recorded. A first SIGTERM is Celery's warm shutdown, which waits for every
    # running task however long: the orchestrator's grace period (compose's stop_grace_period,
    # Kubernetes' terminationGracePeriodSeconds) bounds it. Whatever is left unacked when the
    # process ends is sent again by the sweeper (workers/orphans.py).
    worker_soft_shutdown_timeout=30.0,
    # PostgreSQL holds outputs; Celery results would be a second, stale copy.
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    # Predictions are routed by their version's hardware when sent (prediction_queue).
    task_default_queue=prediction_queue("cpu"),
    # Task events (received, started, succeeded: three Redis publishes a message) only while
    # someone watches: Flower turns them on every few seconds while it runs (its
    # `enable_events` default), and they stop costing anything when it is gone.
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@setup_logging.connect  # type: ignore[untyped-decorator]
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Connected, this replaces Celery's own logging setup: our JSON (or text) lines, at the
    level of `--loglevel`, for Celery's loggers too."""
    log_format.configure_logging(loglevel or logging.INFO)


# Per thread (a thread runs one task at a time; a redelivered task may share an id with one
# still running elsewhere): what to restore when the task ends.
_task_context = threading.local()


@task_prerun.connect  # type: ignore[untyped-decorator]
def _bind_task_ids(task_id: str, task: Any, args: Any = (), **_: Any) -> None:
    """Celery's lines about a task (retry, failure, success) carry its id and prediction ids."""
    ids = args[0] if task.name == RUN_PREDICTION_TASK and args else None
    if isinstance(ids, list) and len(ids) == 1:
        ids = ids[0]
    many = isinstance(ids, list)
    _task_context.tokens = log_format.bind(
        task_id=task_id, prediction_id=None if many else ids, prediction_ids=ids if many else None
    )


@task_postrun.connect  # type: ignore[untyped-decorator]
def _unbind_task_ids(**_: Any) -> None:
    log_format.unbind(getattr(_task_context, "tokens", []))
    _task_context.tokens = []
