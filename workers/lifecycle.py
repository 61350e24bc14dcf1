"""What a worker process starts, on Celery's signals: its runtime (workers/runtime.py), the
metrics server, and the runtime's background threads (lease heartbeat, cancel listener and
sweeper, or the webhook dispatcher, by the queues it consumes).

The Celery app (workers/celery_app.py) only configures; it lists this module in its `include`,
so a worker imports it, as it does the task modules, before sending worker_init. Neither
the sweeper nor the dispatcher imports the app: they are handed it here.
"""

from typing import Any

from celery.signals import worker_init, worker_ready

from workers import container
from workers.runtime import WorkerRuntime, get_runtime, install
from workers.settings import get_worker_settings


@worker_init.connect  # type: ignore[untyped-decorator]
def _build_runtime(**_: Any) -> None:
    """The process's one runtime, built before any task runs (tasks find it with get_runtime())."""
    container.share_cores()  # before any model imports torch
    install(WorkerRuntime(get_worker_settings()))


@worker_init.connect  # type: ignore[untyped-decorator]
def _serve_metrics(**_: Any) -> None:
    settings = get_worker_settings()
    if settings.metrics_port:
        from workers import metrics

        metrics.serve(settings.metrics_host, settings.metrics_port)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_background_threads(sender: Any, **_: Any) -> None:
    """Which threads depends on the queues this worker consumes (WorkerRuntime.start)."""
    get_runtime().start(sender.app, set(sender.app.amqp.queues.consume_from))
