"""Flower, live: workers send no task events of their own accord (they cost three Redis
publishes a message), yet Flower sees every task, because it turns events on while it runs."""

import os
import time

import httpx
import pytest

from tests.conftest import DATABASE_URL, WORKER_REDIS_URL
from tests.live import LiveStack
from tests.processes import free_port, http_ok, start, stop, wait_for_prediction, wait_until

pytestmark = pytest.mark.slow


def test_flower_sees_the_tasks_of_workers_that_send_no_events_until_it_asks(
    live: LiveStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    env = os.environ | {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": WORKER_REDIS_URL,
        "FLOWER_BASIC_AUTH": "ops:flower-test-password",
    }
    flower = start(
        ["-m", "celery", "-A", "workers.celery_app", "flower",
         "--address=127.0.0.1", f"--port={port}"],
        env, tmp_path_factory.mktemp("flower") / "flower.log",
    )  # fmt: skip
    auth = ("ops", "flower-test-password")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/healthcheck"), 60, "Flower")
        time.sleep(6)  # Flower turns the workers' events on every 5 s
        body = {"model": "quern/all-minilm-l6-v2", "input": {"text": "watched by Flower"}}
        created = live.client.post("/v1/predictions", json=body, headers=live.headers).json()
        wait_for_prediction(live.client, created["urls"]["get"], live.headers, timeout=120)

        def seen() -> bool:
            tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
            return any(created["id"] in str(task.get("args")) for task in tasks.values())

        wait_until(seen, 30, "Flower to list the prediction's task")
    finally:
        stop(flower)
