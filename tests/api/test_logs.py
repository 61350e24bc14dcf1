"""Log lines: one JSON object each, naming the request and the prediction they concern."""

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.errors import install_error_handlers
from api.middleware import RequestId
from common import log_format
from common.log_format import JsonFormatter, TextFormatter, configure_logging, log_context
from tests.support.log_lines import Lines, capture_lines
from tests.support.processes import wait_until

EMBED = "quern/all-minilm-l6-v2"


@pytest.fixture
def lines() -> Iterator[Lines]:
    yield from capture_lines()


def format_json(record: logging.LogRecord) -> dict[str, Any]:
    text = JsonFormatter().format(record)
    assert "\n" not in text  # one line per record, tracebacks included
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def make_record(message: str, *args: object, exc_info: Any = None) -> logging.LogRecord:
    return logging.getLogger("quern.test").makeRecord(
        "quern.test", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_a_line_is_one_json_object_with_the_ids_set() -> None:
    plain = format_json(make_record("hello %s", "world"))
    assert list(plain) == ["timestamp", "level", "logger", "message"]
    assert plain["level"] == "WARNING" and plain["logger"] == "quern.test"
    assert plain["message"] == "hello world"
    assert plain["timestamp"].endswith("+00:00") and "T" in plain["timestamp"]

    with log_context(request_id="r-1", prediction_id="p-1", prediction_ids=["p-1", "p-2"]):
        try:
            raise ValueError("broken")
        except ValueError:
            import sys

            line = format_json(make_record("failed", exc_info=sys.exc_info()))
    assert line["request_id"] == "r-1" and line["prediction_id"] == "p-1"
    assert line["prediction_ids"] == ["p-1", "p-2"]
    assert "ValueError: broken" in line["exception"] and "Traceback" in line["exception"]
    assert list(line)[-1] == "exception"
    # Outside the block the ids are gone again.
    assert "request_id" not in format_json(make_record("later"))


def test_the_text_format_appends_the_ids() -> None:
    with log_context(request_id="r-2", prediction_ids=["a", "b"]):
        text = TextFormatter().format(make_record("hi"))
    assert text.endswith("WARNING quern.test hi [request_id=r-2 prediction_ids=a,b]")


def test_the_format_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUERN_LOG_FORMAT", raising=False)
    monkeypatch.setenv("QUERN_ENV", "production")
    assert log_format.log_format() == "json"
    monkeypatch.setenv("QUERN_ENV", "development")  # `make run`
    assert log_format.log_format() == "text"
    monkeypatch.setenv("QUERN_LOG_FORMAT", "json")
    assert log_format.log_format() == "json"
    monkeypatch.setenv("QUERN_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="QUERN_LOG_FORMAT"):
        log_format.log_format()


def test_configuring_twice_keeps_one_handler_and_routes_uvicorn_through_it() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_logging(logging.INFO, "json")
        configure_logging(logging.INFO, "json")
        ours = [h for h in root.handlers if h.get_name() == log_format.HANDLER_NAME]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        access = logging.getLogger("uvicorn.access")
        assert access.propagate and not access.handlers
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.handlers[:0] = [h for h in before if h not in root.handlers]


def test_the_recorder_pool_runs_calls_in_the_submitters_context() -> None:
    pool = log_format.ContextThreadPoolExecutor(max_workers=1)
    with log_context(prediction_ids=["x", "y"]):
        seen = pool.submit(log_format.context_fields).result()
    assert seen == {"prediction_ids": ["x", "y"]}
    assert pool.submit(log_format.context_fields).result() == {}
    pool.shutdown()


def test_ids_reach_sync_endpoints_in_the_thread_pool_and_never_leak_between_requests(
    lines: Lines,
) -> None:
    app = FastAPI()
    app.add_middleware(RequestId)
    install_error_handlers(app)
    log = logging.getLogger("quern.test.app")

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:  # run by run_in_threadpool
        log_format.prediction_id.set("p-sync")
        log.info("in the sync endpoint")
        return {}

    @app.get("/async")
    async def async_endpoint() -> dict[str, str]:
        log.info("in the async endpoint")
        return {}

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert test_client.get("/sync", headers={"X-Request-ID": "req-a"}).status_code == 200
        assert test_client.get("/async", headers={"X-Request-ID": "req-b"}).status_code == 200
        assert test_client.get("/crash", headers={"X-Request-ID": "req-c"}).status_code == 500
    [in_sync] = lines.with_message("in the sync endpoint")
    [in_async] = lines.with_message("in the async endpoint")
    [crashed] = lines.with_message("unhandled error")
    assert in_sync["request_id"] == "req-a" and in_sync["prediction_id"] == "p-sync"
    assert in_async["request_id"] == "req-b" and "prediction_id" not in in_async
    assert crashed["request_id"] == "req-c" and "RuntimeError: boom" in crashed["exception"]
    assert log_format.request_id.get() is None and log_format.prediction_id.get() is None


def test_an_api_requests_lines_carry_its_request_id_and_prediction_id(
    client: TestClient, auth: dict[str, str], lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("api.services.predictions"), "level", logging.DEBUG)
    created = client.post(
        "/v1/predictions",
        json={"model": EMBED, "input": {"text": "logged"}},
        headers={**auth, "X-Request-ID": "req-create-1"},
    )
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-ID"] == "req-create-1"
    prediction_id = created.json()["id"]
    [created_line] = lines.with_message("prediction created")
    assert created_line["request_id"] == "req-create-1"
    assert created_line["prediction_id"] == prediction_id
    assert created_line["logger"] == "api.services.predictions"
    assert created_line["level"] == "DEBUG"  # a line per create is not worth its cost at INFO

    canceled = client.post(
        f"/v1/predictions/{prediction_id}/cancel",
        headers={**auth, "X-Request-ID": "req-cancel-1"},
    )
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    [line] = lines.with_message("prediction canceled")
    assert line["request_id"] == "req-cancel-1" and line["prediction_id"] == prediction_id


def test_a_failed_enqueue_is_logged_with_the_prediction_id(
    client: TestClient, auth: dict[str, str], lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import queue

    def unreachable(*_: object, **__: object) -> None:
        raise ConnectionError("Redis is down (stand-in)")

    monkeypatch.setattr(queue.get_client(), "send_task", unreachable)
    created = client.post(
        "/v1/predictions",
        json={"model": EMBED, "input": {"text": "not queued"}},
        headers={**auth, "X-Request-ID": "req-no-redis"},
    )
    assert created.status_code == 201, created.text
    # Sent after the answer by the publisher thread, possibly with other requests' ids.
    wait_until(lambda: lines.with_message("could not enqueue prediction"), 5, "the line")
    [line] = lines.with_message("could not enqueue prediction")
    assert created.json()["id"] in line["prediction_ids"]
    assert "ConnectionError: Redis is down" in line["exception"]
