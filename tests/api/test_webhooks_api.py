"""Webhooks through the API (no worker running): the create fields and the SSRF guard at
create time, the signing secret, the delivery log and redelivery."""

import base64

import pytest
from fastapi.testclient import TestClient

from tests.support.helpers import assert_problem, count_predictions, register_and_login

EMBED = "quern/all-minilm-l6-v2"
PUBLIC_HOOK = "https://93.184.215.14/hooks/quern?token=abc"  # a public address: no DNS needed


def create(client: TestClient, auth: dict[str, str], **fields: object) -> dict[str, object]:
    body = {"model": EMBED, "input": {"text": "hook"}} | fields
    response = client.post("/v1/predictions", json=body, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


@pytest.mark.parametrize(
    ("webhook", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
        ("http://10.20.30.40/hook", "10.20.30.40 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://localhost:8000/hook", "localhost resolves to"),
        ("https://nowhere.invalid/hook", "does not resolve"),
    ],
)
def test_a_webhook_the_guard_refuses_is_a_422_naming_it_and_nothing_is_stored(
    client: TestClient, auth: dict[str, str], webhook: str, reason: str
) -> None:
    before = count_predictions()
    response = client.post(
        "/v1/predictions", json={"model": EMBED, "input": {"text": "x"}, "webhook": webhook},
        headers=auth,
    )  # fmt: skip
    body = assert_problem(response, 422, "webhook")
    assert reason in body["invalid_fields"][0]["message"]
    assert count_predictions() == before


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"webhook_events_filter": ["completed"]}, "webhook_events_filter"),  # no webhook
        ({"webhook": PUBLIC_HOOK, "webhook_events_filter": []}, "webhook_events_filter"),
        ({"webhook": PUBLIC_HOOK, "webhook_events_filter": ["done"]}, "webhook_events_filter[0]"),
        ({"webhook": "ftp://93.184.215.14/x"}, "webhook"),
        ({"webhook": "https://93.184.215.14/a b"}, "webhook"),
        ({"webhook": "https://93.184.215.14/" + "x" * 2048}, "webhook"),
    ],
)
def test_malformed_webhook_fields_are_422(
    client: TestClient, auth: dict[str, str], fields: dict[str, object], field: str
) -> None:
    body = {"model": EMBED, "input": {"text": "x"}} | fields
    assert_problem(client.post("/v1/predictions", json=body, headers=auth), 422, field)


def test_the_webhook_and_its_filter_are_stored_and_returned(
    client: TestClient, auth: dict[str, str]
) -> None:
    everything = create(client, auth, webhook=PUBLIC_HOOK)
    assert everything["webhook"] == PUBLIC_HOOK
    assert everything["webhook_events_filter"] == ["start", "output", "logs", "completed"]
    some = create(
        client, auth, webhook=PUBLIC_HOOK, webhook_events_filter=["completed", "start", "start"]
    )
    assert some["webhook_events_filter"] == ["start", "completed"]
    assert client.get(f"/v1/predictions/{some['id']}", headers=auth).json() == some
    plain = create(client, auth)
    assert plain["webhook"] is None and plain["webhook_events_filter"] is None


def test_the_idempotency_key_covers_the_webhook(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Idempotency-Key": "hook-1"}
    body = {"model": EMBED, "input": {"text": "x"}, "webhook": PUBLIC_HOOK}
    first = client.post("/v1/predictions", json=body, headers=headers)
    assert first.status_code == 201
    again = client.post("/v1/predictions", json=body, headers=headers)
    assert again.json()["id"] == first.json()["id"]
    other = body | {"webhook_events_filter": ["completed"]}
    assert_problem(client.post("/v1/predictions", json=other, headers=headers), 422)


def test_each_user_has_one_whsec_secret_of_32_bytes(client: TestClient, auth) -> None:
    key = client.get("/v1/webhooks/default/secret", headers=auth).json()["key"]
    assert key.startswith("whsec_") and len(base64.b64decode(key.removeprefix("whsec_"))) == 32
    assert client.get("/v1/webhooks/default/secret", headers=auth).json() == {"key": key}
    other = register_and_login(client)
    assert client.get("/v1/webhooks/default/secret", headers=other).json()["key"] != key


def test_a_cancel_writes_the_completed_delivery_which_redeliver_sends_again_with_a_new_id(
    client: TestClient, auth: dict[str, str]
) -> None:
    prediction = create(client, auth, webhook=PUBLIC_HOOK)
    log_url = f"/v1/predictions/{prediction['id']}/webhooks"
    assert client.get(log_url, headers=auth).json() == {"results": []}
    client.post(f"/v1/predictions/{prediction['id']}/cancel", headers=auth)
    (completed,) = client.get(log_url, headers=auth).json()["results"]
    assert completed["event"] == "completed" and completed["status"] == "pending"
    assert completed["url"] == PUBLIC_HOOK and completed["attempts"] == []

    again = client.post(f"{log_url}/redeliver", headers=auth)
    assert again.status_code == 202, again.text
    assert (
        again.json()["id"] != completed["id"] and again.json()["redelivery_of"] == completed["id"]
    )
    assert [d["id"] for d in client.get(log_url, headers=auth).json()["results"]] == [
        completed["id"],
        again.json()["id"],
    ]


def test_the_log_and_redeliver_are_the_owners_only(client: TestClient, auth) -> None:
    prediction = create(client, auth, webhook=PUBLIC_HOOK)
    stranger = register_and_login(client)
    base = f"/v1/predictions/{prediction['id']}/webhooks"
    assert_problem(client.get(base, headers=stranger), 404)
    assert_problem(client.post(f"{base}/redeliver", headers=stranger), 404)
    assert_problem(client.get("/v1/predictions/not-an-id/webhooks", headers=auth), 404)
    assert_problem(client.post(f"{base}/redeliver", headers=auth), 409)  # nothing sent yet
    plain = create(client, auth)
    assert_problem(
        client.post(f"/v1/predictions/{plain['id']}/webhooks/redeliver", headers=auth), 409
    )
