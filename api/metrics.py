"""Prometheus metrics of the API, at `GET /metrics`.

uvicorn runs several processes, and a scrape reaches one of them: with PROMETHEUS_MULTIPROC_DIR
set (the API image sets it and empties it at start), every process writes its counters there
and any one of them reports the sum (prometheus-client's multiprocess mode). Without it (one
process, `make api`), the process's own registry is the whole truth. The queue depth per model
is read from PostgreSQL at scrape time, so it is right whichever process answers.
"""

import logging
import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.repositories import predictions
from db.session import session_scope

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "quern_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "quern_http_request_duration_seconds",
    "Time to answer an HTTP request (a `Prefer: wait` create includes its wait).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CREATED = Counter("quern_predictions_created_total", "Predictions created.", ["model"])
CACHE_HITS = Counter(
    "quern_cache_hits_total", "Predictions answered from the result cache.", ["model"]
)
CACHE_MISSES = Counter(
    "quern_cache_misses_total",
    "Predictions of caching versions with deterministic inputs the cache did not hold.",
    ["model"],
)
CANCELED = Counter(
    "quern_predictions_canceled_total", "Predictions canceled through the API.", ["model"]
)


class QueueDepth(Collector):
    def collect(self):  # type: ignore[no-untyped-def]
        gauge = GaugeMetricFamily(
            "quern_queue_depth", "Predictions waiting for a worker, per model.", labels=["model"]
        )
        try:
            with session_scope() as session:
                for model, count in predictions.queued_by_model(session):
                    gauge.add_metric([model], count)
        except Exception as exc:  # a scrape must still answer when the database is down
            log.warning("queue depth not measured: %s", exc)
        yield gauge


def render() -> tuple[bytes, str]:
    """The exposition text of every API process, plus the queue depth."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    queue = CollectorRegistry()
    queue.register(QueueDepth())
    return generate_latest(registry) + generate_latest(queue), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Counts and times every request by its route template (`/v1/predictions/{prediction_id}`,
    never the raw path, so ids do not explode the label set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)
