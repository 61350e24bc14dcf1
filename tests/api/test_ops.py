"""/metrics and /ready of the API process (in-process; the multi-process and fault cases start
real processes in tests/test_ops_processes.py and tests/test_faults.py)."""

import re

from fastapi.testclient import TestClient

BODY = {"model": "quern/all-minilm-l6-v2", "input": {"text": "count me"}}


def _value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels...}` of an exposition, 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_predictions_and_queue_depth(
    client: TestClient, auth
) -> None:
    before = client.get("/metrics").text
    created = client.post("/v1/predictions", json=BODY, headers=auth).json()
    client.get(f"/v1/predictions/{created['id']}", headers=auth)
    client.post("/v1/predictions", json=BODY, headers=auth)
    client.post(f"/v1/predictions/{created['id']}/cancel", headers=auth)
    after = client.get("/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    model = "quern/all-minilm-l6-v2"
    assert (
        _value(text, "quern_predictions_created_total", model=model)
        - _value(before, "quern_predictions_created_total", model=model)
        == 2
    )
    assert _value(text, "quern_predictions_canceled_total", model=model) >= 1
    # By route template, never by raw path (ids would explode the label set).
    route = "/v1/predictions/{prediction_id}"
    assert _value(text, "quern_http_requests_total", method="GET", route=route, status="200") >= 1
    assert created["id"] not in text
    assert (
        _value(
            text,
            "quern_http_request_duration_seconds_count",
            method="POST",
            route="/v1/predictions",
        )
        >= 2
    )
    # Nothing consumes the in-process tests' queue, so the second prediction is still queued.
    assert _value(text, "quern_queue_depth", model=model) >= 1


def test_metrics_need_no_token_and_unknown_routes_share_one_label(client: TestClient) -> None:
    client.get("/no/such/path/abc123")
    text = client.get("/metrics").text
    assert 'route="unmatched"' in text and "abc123" not in text


def test_ready_reports_each_dependency(client: TestClient) -> None:
    # The in-process tests' broker database has no worker listening: not ready, and it says why.
    response = client.get("/ready")
    body = response.json()
    assert set(body["checks"]) == {"postgres", "redis", "workers"}
    assert body["checks"]["postgres"]["ok"] and body["checks"]["redis"]["ok"]
    if not body["checks"]["workers"]["ok"]:
        assert response.status_code == 503 and body["status"] == "not ready"
        assert re.search("no worker", body["checks"]["workers"]["detail"])
