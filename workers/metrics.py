"""Prometheus metrics of a worker process, served on QUERN_WORKER_METRICS_PORT when set.

The threads pool runs every task in one process, so the default registry is the whole truth
(no multiprocess directory needed).
"""

import logging
import sys

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "quern_batch_size",
    "Predictions run together in one forward pass.",
    ["model_type"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
PREDICT_SECONDS = Histogram(
    "quern_batch_predict_seconds",
    "Time of one forward pass (one batch).",
    ["model_type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_LOAD_SECONDS = Histogram(
    "quern_model_load_seconds",
    "Time to load and set up a model version in a worker process.",
    ["model_type"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
MODEL_EVICTIONS = Counter(
    "quern_model_evictions_total",
    "Models dropped from a worker process's cache to stay within its memory budget.",
    ["device"],
)
MODEL_MEMORY_BYTES = Gauge(
    "quern_model_memory_bytes", "Bytes of model weights a worker process holds.", ["device"]
)

FINISHED = Counter(
    "quern_predictions_finished_total",
    "Predictions a worker brought to a final status (succeeded, failed, canceled by deadline or "
    "run timeout).",
    ["model", "status"],
)
RETRIES = Counter(
    "quern_prediction_retries_total",
    "Attempts that failed transiently and will run again.",
    ["model"],
)
WEBHOOK_DELIVERIES = Counter(
    "quern_webhook_deliveries_total",
    "Webhook delivery attempts by event and outcome: succeeded, retried (tried again later), "
    "failed (out of attempts), stopped (the receiver answered 410) or skipped (a progress event "
    "superseded by a later one).",
    ["event", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "quern_webhook_delivery_seconds",
    "Time of one webhook delivery attempt: resolve, connect, send, read the answer.",
    ["event"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def count_delivery(event: str, status: str) -> None:
    """One attempt's outcome: the delivery's status after it, `retried` while still pending."""
    WEBHOOK_DELIVERIES.labels(event, "retried" if status == "pending" else status).inc()


GPU_MEMORY = Gauge(
    "quern_gpu_memory_bytes", "GPU memory held by this process's tensors.", ["device"]
)


def observe_gpu_memory() -> None:
    """After each batch, on a process that has used CUDA (never initialising it here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        GPU_MEMORY.labels(f"cuda:{index}").set(torch.cuda.memory_allocated(index))


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
