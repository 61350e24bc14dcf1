"""Sending work to the workers: task names and ids only, over Redis, never importing workers/."""

import logging
from functools import lru_cache

from celery import Celery

from api.settings import get_api_settings

log = logging.getLogger(__name__)

# The contract with workers/celery_app.py (a test checks both sides agree).
RUN_PREDICTION_TASK = "quern.predictions.run"


def prediction_queue(hardware: str) -> str:
    return f"predictions.{hardware}"


@lru_cache
def get_client() -> Celery:
    """A Celery app used only to publish. It fails fast rather than hanging a request."""
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


def enqueue_prediction(prediction_id: str, version_id: str, hardware: str) -> bool:
    """Publish after the row is committed; the version id lets the worker batch it unread.

    False when Redis is unreachable: the row stays `starting` and can be re-enqueued; the
    client already has its 201."""
    try:
        get_client().send_task(
            RUN_PREDICTION_TASK,
            args=[prediction_id, version_id],
            queue=prediction_queue(hardware),
            ignore_result=True,
        )
    except Exception:
        log.exception("could not enqueue prediction %s; it stays starting", prediction_id)
        return False
    return True
