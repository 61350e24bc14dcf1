"""/metrics and /ready of the API process (in-process; the multi-process and fault cases start
real processes in tests/ops/test_ops_processes.py and tests/system/test_faults.py), and who may
read them.

The in-process client's address is "testclient", never loopback: it is an operator only with
the token, set on the settings object here.
"""

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from starlette.requests import HTTPConnection

from api.ops_access import is_operator
from api.routes import health
from api.settings import ApiSettings, get_api_settings

BODY = {"model": "quern/all-minilm-l6-v2", "input": {"text": "count me"}}
TOKEN = "ops-test-token-0123456789"


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """QUERN_METRICS_TOKEN set; the headers Prometheus would send."""
    monkeypatch.setattr(get_api_settings(), "metrics_token", SecretStr(TOKEN))
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_api_settings(), "metrics_token", None)


def connection(host: str, *headers: tuple[str, str]) -> HTTPConnection:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    return HTTPConnection({"type": "http", "client": (host, 50000), "headers": raw})


def _value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels...}` of an exposition, 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_predictions_and_queue_depth(
    client: TestClient, auth, ops: dict[str, str]
) -> None:
    before = client.get("/metrics", headers=ops).text
    created = client.post("/v1/predictions", json=BODY, headers=auth).json()
    client.get(f"/v1/predictions/{created['id']}", headers=auth)
    client.post("/v1/predictions", json=BODY, headers=auth)
    client.post(f"/v1/predictions/{created['id']}/cancel", headers=auth)
    after = client.get("/metrics", headers=ops)
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    model = "quern/all-minilm-l6-v2"

    def grew(name: str, **labels: str) -> float:
        """By how much this test's requests moved a sample (earlier tests' share the process)."""
        return _value(text, name, **labels) - _value(before, name, **labels)

    assert grew("quern_predictions_created_total", model=model) == 2
    assert grew("quern_predictions_canceled_total", model=model) == 1
    # By route template, never by raw path (ids would explode the label set).
    route = "/v1/predictions/{prediction_id}"
    assert grew("quern_http_requests_total", method="GET", route=route, status="200") == 1
    assert created["id"] not in text
    duration_count = "quern_http_request_duration_seconds_count"
    assert grew(duration_count, method="POST", route="/v1/predictions") == 2
    # Nothing consumes the in-process tests' queue, so the second prediction is still queued.
    assert grew("quern_queue_depth", model=model) == 1


def test_unknown_routes_share_one_label(client: TestClient, ops: dict[str, str]) -> None:
    client.get("/no/such/path/abc123")
    text = client.get("/metrics", headers=ops).text
    assert 'route="unmatched"' in text and "abc123" not in text


def test_metrics_need_the_token_when_one_is_set(
    client: TestClient, auth: dict[str, str], ops: dict[str, str]
) -> None:
    for headers in ({}, auth, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "quern_" not in response.text
    assert client.get("/metrics", headers={"Authorization": f"bearer  {TOKEN}"}).status_code == 200


def test_without_a_token_metrics_are_refused_from_afar(client: TestClient, no_token: None) -> None:
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "QUERN_METRICS_TOKEN" in response.json()["detail"]


def test_without_a_token_an_operator_is_local_and_not_proxied(no_token: None) -> None:
    assert is_operator(connection("127.0.0.1"))
    assert is_operator(connection("::1"))
    assert not is_operator(connection("10.0.0.7"))
    assert not is_operator(connection("testclient"))
    # A reverse proxy on the same host: the client it forwards is anyone.
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        assert not is_operator(connection("127.0.0.1", (header, "203.0.113.9")))


def test_with_a_token_only_the_token_counts(ops: dict[str, str]) -> None:
    assert not is_operator(connection("127.0.0.1"))
    assert is_operator(connection("203.0.113.9", ("Authorization", ops["Authorization"])))
    assert not is_operator(connection("127.0.0.1", ("Authorization", "Basic " + TOKEN)))


def test_the_token_is_long_or_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUERN_METRICS_TOKEN", "short")
    with pytest.raises(ValidationError, match="QUERN_METRICS_TOKEN"):
        ApiSettings()
    monkeypatch.setenv("QUERN_METRICS_TOKEN", "")
    assert ApiSettings().metrics_token is None


def test_ready_tells_the_public_only_ready_or_not(
    client: TestClient, no_token: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for answered, status, text in ((True, 200, "ready"), (False, 503, "not ready")):
        monkeypatch.setattr(health, "_workers", _workers_answering(answered))
        response = client.get("/ready")
        assert (response.status_code, response.json()) == (status, {"status": text})


def test_ready_reports_each_dependency_to_operators(
    client: TestClient, ops: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "_workers", _workers_answering(False))
    response = client.get("/ready", headers=ops)
    body = response.json()
    assert response.status_code == 503 and body["status"] == "not ready"
    assert set(body["checks"]) == {"postgres", "redis", "workers"}
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    assert re.search("no worker", body["checks"]["workers"]["detail"])
    monkeypatch.setattr(health, "_workers", _workers_answering(True))
    response = client.get("/ready", headers=ops)
    assert response.status_code == 200 and response.json()["checks"]["workers"]["ok"]


def _workers_answering(answered: bool) -> Callable[[], str]:
    """The workers check as the broker would answer it (in-process tests run no worker, and
    a worker of another test run on this Redis may answer a real ping)."""

    def check() -> str:
        if not answered:
            raise RuntimeError("no worker answered within 1 s")
        return "1 answered"

    return check
