"""A live stack for the slow tests: a uvicorn API, a Celery worker process and a webhooks
worker process, shared by every test module that asks for `live` (starting a worker and loading
models takes seconds)."""

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATABASE_URL, WORKER_REDIS_URL
from tests.support.helpers import register_and_login
from tests.support.processes import free_port, http_ok, start, stop, wait_until


@dataclass
class LiveStack:
    base_url: str
    client: httpx.Client
    headers: dict[str, str]
    worker_log: Path
    worker_metrics: str
    api_pid: int
    webhooks_metrics: str


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A uvicorn API, a Celery worker process and a webhooks worker process on the run's
    database and Redis. Webhooks may go to loopback (the tests' receivers) and retry fast. Its
    worker sweeps once, at start, and not again: the tests that sweep (tests/workers) must be
    the only sweeper of the rows they stage, or another sweep may requeue them first."""
    logs = tmp_path_factory.mktemp("live")
    metrics_port, webhooks_metrics_port = free_port(), free_port()
    port = free_port()
    env = os.environ | {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": WORKER_REDIS_URL,
        "QUERN_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "QUERN_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "QUERN_WORKER_WEBHOOK_RETRY_BASE_S": "0.4",
        "QUERN_WORKER_WEBHOOK_TIMEOUT_S": "3",
        "QUERN_WORKER_WEBHOOK_LEASE_S": "5",
        "QUERN_WORKER_WEBHOOK_DISPATCH_INTERVAL_S": "0.5",
        "QUERN_WORKER_SWEEP_INTERVAL_S": "86400",
    }
    webhooks = start(
        ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "webhooks",
         "-n", f"test-webhooks-{secrets.token_hex(3)}@%h", "--loglevel", "INFO"],
        env | {"QUERN_WORKER_METRICS_PORT": str(webhooks_metrics_port)}, logs / "webhooks.log",
    )  # fmt: skip
    worker = start(
        ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "predictions.cpu",
         "-n", f"test-{secrets.token_hex(3)}@%h", "--loglevel", "INFO"],
        env | {"QUERN_WORKER_METRICS_PORT": str(metrics_port)}, logs / "worker.log",
    )  # fmt: skip
    api = start(
        ["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env,
        logs / "api.log",
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base_url}/health"), 60, "the API")
        with httpx.Client(base_url=base_url, timeout=30) as client:
            yield LiveStack(
                base_url,
                client,
                register_and_login(client),
                logs / "worker.log",
                f"http://127.0.0.1:{metrics_port}/metrics",
                api.pid,
                f"http://127.0.0.1:{webhooks_metrics_port}/metrics",
            )
    finally:
        stop(api)
        stop(worker)
        stop(webhooks)
