"""Deadlines, backpressure and a Redis outage at create time, as the API sees them."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from api import queue
from api.settings import get_api_settings
from tests.support.helpers import assert_problem, create_version
from tests.support.processes import wait_until
from tests.workers.stubs import load

EMBED = "quern/all-minilm-l6-v2"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("30", 30),  # bare: seconds
        ("1h30m0s", 5400),  # as Go writes durations
        ("168h", 7 * 86400),
        ("604800", 7 * 86400),
    ],
)
def test_cancel_after_sets_the_deadline(
    client: TestClient, auth: dict[str, str], header: str, seconds: int
) -> None:
    before = datetime.now(UTC)
    response = client.post(
        "/v1/predictions",
        json={"model": EMBED, "input": {"text": "soon"}},
        headers=auth | {"Cancel-After": header},
    )
    assert response.status_code == 201, response.text
    deadline = datetime.fromisoformat(response.json()["deadline"])
    assert (
        before + timedelta(seconds=seconds - 1) < deadline < before + timedelta(seconds=seconds + 5)
    )


@pytest.mark.parametrize(
    "header", ["", "soon", "0", "0s", "8d", "1h1h", "-5s", "9999999h", "169h", "1h90m", "604801"]
)
def test_a_bad_cancel_after_is_422_naming_the_header(
    client: TestClient, auth: dict[str, str], header: str
) -> None:
    response = client.post(
        "/v1/predictions",
        json={"model": EMBED, "input": {"text": "x"}},
        headers=auth | {"Cancel-After": header},
    )
    assert_problem(response, 422, "Cancel-After")


def test_a_full_queue_answers_503_with_retry_after(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_api_settings(), "max_queued_per_version", 2)
    version = create_version(max_batch_size=4, max_batch_wait_ms=0)
    body = {"version": version, "input": {"text": "x"}}
    for _ in range(2):
        assert client.post("/v1/predictions", json=body, headers=auth).status_code == 201
    response = client.post("/v1/predictions", json=body, headers=auth)
    assert_problem(response, 503, "queued")
    assert response.headers["Retry-After"] == "10"


def test_redis_down_at_create_still_answers_201_and_leaves_it_to_the_sweeper(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Redis is down (stand-in)")

    monkeypatch.setattr(queue.get_client(), "send_task", unreachable)
    response = client.post(
        "/v1/predictions", json={"model": EMBED, "input": {"text": "later"}}, headers=auth
    )
    assert response.status_code == 201, response.text
    # The publisher thread fails after the answer, and marks the row for the sweeper.
    wait_until(lambda: load(response.json()["id"]).enqueued_at is None, 5, "the mark")
    assert load(response.json()["id"]).status == "starting"
