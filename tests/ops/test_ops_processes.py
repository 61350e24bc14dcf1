"""Metrics and readiness with real processes: several uvicorn workers sum their metrics, and a
live worker makes the API ready and serves its own metrics."""

import os
from pathlib import Path

import httpx
import pytest

from tests.api.test_ops import _value
from tests.conftest import DATABASE_URL, WORKER_REDIS_URL
from tests.support.live import LiveStack
from tests.support.processes import free_port, http_ok, start, stop, wait_for_prediction, wait_until

pytestmark = pytest.mark.slow


def test_every_uvicorn_process_reports_the_sum_of_all(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = os.environ | {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": WORKER_REDIS_URL,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    api = start(
        ["-m", "uvicorn", "api.main:app", "--port", str(port), "--workers", "2"],
        env,
        tmp_path / "api.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 60, "the API")
        metrics = httpx.get(f"{base}/metrics").text
        counted = _value(metrics, "quern_http_requests_total", route="/health")
        for _ in range(30):  # new connections each time: both processes answer some
            assert httpx.get(f"{base}/health").status_code == 200
        totals = {
            _value(httpx.get(f"{base}/metrics").text, "quern_http_requests_total", route="/health")
            for _ in range(6)
        }
        assert totals == {counted + 30}, totals
        assert len(list(metrics_dir.glob("*.db"))) >= 2  # one file per process
    finally:
        stop(api)


def test_a_live_worker_makes_the_api_ready_and_reports_its_own_metrics(live: LiveStack) -> None:
    ready = live.client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert all(check["ok"] for check in ready.json()["checks"].values())

    body = {"model": "quern/all-minilm-l6-v2", "input": {"text": "measure me"}}
    created = live.client.post("/v1/predictions", json=body, headers=live.headers).json()
    wait_for_prediction(live.client, created["urls"]["get"], live.headers, timeout=120)
    worker = httpx.get(live.worker_metrics).text
    model = "quern/all-minilm-l6-v2"
    assert _value(worker, "quern_predictions_finished_total", model=model, status="succeeded") >= 1
    assert _value(worker, "quern_batch_size_count", model_type="embeddings") >= 1
    assert "quern_model_load_seconds_count" in worker
    assert "quern_prediction_retries_total" in worker
