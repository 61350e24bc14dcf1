"""Creating, reading, listing and canceling predictions through the API (no worker running)."""

import base64
import json

import pytest
import redis
from fastapi.testclient import TestClient

from tests.conftest import API_REDIS_URL
from tests.support.helpers import assert_problem, count_predictions, register_and_login
from tests.support.processes import wait_until

EMBED = "quern/all-minilm-l6-v2"
LLM = "quern/smollm2-135m-instruct"


def create(client: TestClient, auth: dict[str, str], **body: object) -> dict[str, object]:
    response = client.post("/v1/predictions", json=body, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, object] = response.json()
    return result


def test_create_returns_the_replicate_shaped_object(client: TestClient, auth) -> None:
    prediction = create(client, auth, model=EMBED, input={"text": "hello"})
    assert prediction["status"] == "starting"
    assert prediction["model"] == EMBED
    assert len(str(prediction["id"])) == 26
    assert set(prediction) >= {
        "id", "model", "version", "input", "output", "logs", "error", "status",
        "created_at", "started_at", "completed_at", "urls", "metrics",
    }  # fmt: skip
    assert prediction["source"] == "api" and prediction["data_removed"] is False
    _, signed = prediction["urls"]["stream"].split("?")  # tests/api/test_signed_urls.py
    assert prediction["urls"] == {
        "get": f"http://testserver/v1/predictions/{prediction['id']}",
        "cancel": f"http://testserver/v1/predictions/{prediction['id']}/cancel",
        "stream": f"http://testserver/v1/predictions/{prediction['id']}/stream?{signed}",
    }
    assert signed.startswith("expires=") and "&signature=" in signed
    fetched = client.get(f"/v1/predictions/{prediction['id']}", headers=auth).json()
    assert fetched == prediction


def test_stream_true_from_replicates_clients_is_accepted(client: TestClient, auth) -> None:
    """`replicate.stream(...)` sends it; every prediction streams from `urls.stream` anyway."""
    prediction = create(client, auth, model=EMBED, input={"text": "hello"}, stream=True)
    stream = prediction["urls"]["stream"].split("?")[0]
    assert stream.endswith(f"/v1/predictions/{prediction['id']}/stream")


def test_create_by_version_id(client: TestClient, auth) -> None:
    models = client.get("/v1/models", headers=auth).json()["results"]
    version = next(m for m in models if m["name"] == "all-minilm-l6-v2")["latest_version"]["id"]
    prediction = create(client, auth, version=version, input={"text": "hi"})
    assert prediction["version"] == version and prediction["model"] == EMBED


def test_defaults_from_the_schema_are_stored(client: TestClient, auth) -> None:
    prediction = create(client, auth, model=LLM, input={"prompt": "hi"})
    assert prediction["input"] == {
        "prompt": "hi", "max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9,
    }  # fmt: skip


def test_create_enqueues_only_the_ids_after_commit(client: TestClient, auth) -> None:
    broker = redis.Redis.from_url(API_REDIS_URL)
    broker.delete("predictions.cpu")
    prediction = create(client, auth, model=EMBED, input={"text": "queued"})
    # The publisher thread sends it right after the answer.
    wait_until(lambda: broker.llen("predictions.cpu") > 0, 5, "the message")
    messages = [json.loads(raw) for raw in broker.lrange("predictions.cpu", 0, -1)]
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "quern.predictions.run"
    args = json.loads(base64.b64decode(messages[0]["body"]))[0]
    assert args == [[prediction["id"]], prediction["version"]]


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ('{"model": "quern/all-minilm-l6-v2", "input": {"text": "a"', 400, "JSON"),
        ("not json at all", 400, "JSON"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {"text": "a"}, "foo": 1}', 422, "foo"),
        ('{"model": "quern/all-minilm-l6-v2"}', 422, "input"),
        ('{"input": {"text": "a"}}', 422, "version"),
        ('{"model": "quern/no-such-model", "input": {"text": "a"}}', 422, "model"),
        ('{"model": "not a ref", "input": {"text": "a"}}', 422, "model"),
        ('{"version": "nope", "input": {"text": "a"}}', 422, "version"),
        ('{"model": "quern/all-minilm-l6-v2", "input": "text"}', 422, "input"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {"text": 5}}', 422, "input.text"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {"txt": "a"}}', 422, "input.txt"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {}}', 422, "input.text"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {"text": ""}}', 422, "input.text"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {"text": "a\\u0000b"}}', 422, "input.text"),
        ('{"model": "quern/all-minilm-l6-v2", "input": {"text": "\\ud800"}}', 422, "input.text"),
        (
            '{"model": "quern/smollm2-135m-instruct", "input": {"prompt": "a", '
            '"max_new_tokens": 100000, "temperature": "hot"}}',
            422,
            "input.max_new_tokens",
        ),
        ("[1, 2]", 422, "body"),
    ],
)
def test_bad_input_is_a_4xx_problem_that_names_it_and_writes_nothing(
    client: TestClient, auth, body: str, status: int, named: str
) -> None:
    before = count_predictions()
    response = client.post(
        "/v1/predictions", content=body, headers=auth | {"Content-Type": "application/json"}
    )
    assert_problem(response, status, named)
    assert count_predictions() == before


def test_every_bad_input_field_is_listed(client: TestClient, auth) -> None:
    response = client.post(
        "/v1/predictions",
        json={"model": LLM, "input": {"max_new_tokens": 0, "top_p": 0, "colour": "red"}},
        headers=auth,
    )
    body = assert_problem(response, 422)
    fields = {item["field"] for item in body["invalid_fields"]}
    assert fields == {"input.prompt", "input.max_new_tokens", "input.top_p", "input.colour"}


def test_wrong_token_writes_nothing(client: TestClient) -> None:
    before = count_predictions()
    response = client.post(
        "/v1/predictions",
        json={"model": EMBED, "input": {"text": "a"}},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert_problem(response, 401)
    assert count_predictions() == before


def test_another_users_prediction_is_404_and_never_listed(client: TestClient, auth) -> None:
    mine = create(client, auth, model=EMBED, input={"text": "private"})
    other = register_and_login(client)
    assert_problem(client.get(f"/v1/predictions/{mine['id']}", headers=other), 404)
    assert_problem(client.post(f"/v1/predictions/{mine['id']}/cancel", headers=other), 404)
    assert client.get("/v1/predictions", headers=other).json()["results"] == []
    assert client.get(f"/v1/predictions/{mine['id']}", headers=auth).json()["status"] == "starting"


def test_unknown_prediction_and_route_are_404_problems(client: TestClient, auth) -> None:
    assert_problem(client.get("/v1/predictions/doesnotexist", headers=auth), 404)
    assert_problem(client.get("/v1/nothing-here", headers=auth), 404)


def test_list_pages_newest_first_with_next_and_previous(client: TestClient) -> None:
    auth = register_and_login(client)
    ids = [create(client, auth, model=EMBED, input={"text": f"n{i}"})["id"] for i in range(5)]
    newest_first = ids[::-1]

    page1 = client.get("/v1/predictions?page_size=2", headers=auth).json()
    assert [p["id"] for p in page1["results"]] == newest_first[:2]
    assert page1["previous"] is None and page1["next"]
    page2 = client.get(page1["next"], headers=auth).json()
    assert [p["id"] for p in page2["results"]] == newest_first[2:4]
    page3 = client.get(page2["next"], headers=auth).json()
    assert [p["id"] for p in page3["results"]] == newest_first[4:]
    assert page3["next"] is None
    back = client.get(page3["previous"], headers=auth).json()
    assert [p["id"] for p in back["results"]] == newest_first[2:4]
    first = client.get(back["previous"], headers=auth).json()
    assert [p["id"] for p in first["results"]] == newest_first[:2]
    assert first["previous"] is None


def test_list_rejects_bad_cursor_and_page_size(client: TestClient, auth) -> None:
    assert_problem(client.get("/v1/predictions?cursor=zzz", headers=auth), 422, "cursor")
    assert_problem(client.get("/v1/predictions?page_size=0", headers=auth), 422, "page_size")
    assert_problem(client.get("/v1/predictions?page_size=1000", headers=auth), 422, "page_size")


def test_cancel_before_start_means_it_never_runs(client: TestClient, auth) -> None:
    from db.repositories import predictions
    from db.session import session_scope

    prediction = create(client, auth, model=EMBED, input={"text": "stop"})
    canceled = client.post(f"/v1/predictions/{prediction['id']}/cancel", headers=auth).json()
    assert canceled["status"] == "canceled" and canceled["completed_at"]
    with session_scope() as session:
        assert predictions.claim(session, ids=[str(prediction["id"])], lease_s=60) == []
    again = client.post(f"/v1/predictions/{prediction['id']}/cancel", headers=auth).json()
    assert again == canceled


def test_health_needs_no_auth(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_models_lists_both_builtin_models_with_schemas(client: TestClient, auth) -> None:
    results = client.get("/v1/models", headers=auth).json()["results"]
    by_name = {m["name"]: m for m in results}
    assert {"all-minilm-l6-v2", "smollm2-135m-instruct"} <= set(by_name)
    schema = by_name["smollm2-135m-instruct"]["latest_version"]["input_schema"]
    # A prompt or a chat's messages, exactly one of them.
    assert schema["oneOf"] == [{"required": ["prompt"]}, {"required": ["messages"]}]
    assert "weights" not in by_name["all-minilm-l6-v2"]["latest_version"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_input_are_422(client: TestClient, auth, number: str) -> None:
    body = f'{{"model": "{LLM}", "input": {{"prompt": "a", "top_p": {number}}}}}'
    before = count_predictions()
    response = client.post(
        "/v1/predictions", content=body, headers=auth | {"Content-Type": "application/json"}
    )
    assert_problem(response, 422, "input.top_p")
    assert count_predictions() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/predictions/%00"),
        ("GET", "/v1/predictions/" + "a" * 500),
        ("POST", "/v1/predictions/ab%00cd/cancel"),
    ],
)
def test_malformed_prediction_ids_are_404(client: TestClient, auth, method, path) -> None:
    assert_problem(client.request(method, path, headers=auth), 404)


def test_version_with_nul_is_422(client: TestClient, auth) -> None:
    response = client.post(
        "/v1/predictions", json={"version": "ab\x00c", "input": {"text": "a"}}, headers=auth
    )
    assert_problem(response, 422, "version")


@pytest.mark.parametrize(
    "cursor",
    [
        "sideways.1767225600000000." + "a" * 26,
        "next.1767225600000000.a%00",
        "next.17672256000000000." + "a" * 26,  # 17 digits: past year 2286
        "next.-1." + "a" * 26,
        "next.1767225600000000." + "a" * 26 + "%0A",
        "next.1767225600000000." + "A" * 26,
        # The base64 JSON cursors Quern issued before.
        base64.urlsafe_b64encode(
            json.dumps(["next", "2026-01-01T00:00:00+00:00", "a" * 26]).encode()
        ).decode(),
    ],
)
def test_crafted_cursors_are_422(client: TestClient, auth, cursor: str) -> None:
    assert_problem(client.get(f"/v1/predictions?cursor={cursor}", headers=auth), 422, "cursor")


def test_nul_in_login_form_is_a_4xx(client: TestClient) -> None:
    response = client.post("/v1/auth/token", data={"username": "a\x00b", "password": "x"})
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/problem+json")


def test_huge_string_gets_a_short_422(client: TestClient, auth) -> None:
    response = client.post(
        "/v1/predictions", json={"model": LLM, "input": {"prompt": "x" * 900_000}}, headers=auth
    )
    assert_problem(response, 422, "input.prompt")
    assert len(response.content) < 2_000


def test_oversized_body_is_413_and_writes_nothing(client: TestClient, auth) -> None:
    before = count_predictions()
    response = client.post(
        "/v1/predictions",
        json={"model": EMBED, "input": {"text": "x" * 2_000_000}},
        headers={**auth, "X-Request-ID": "too-big-1"},
    )
    assert_problem(response, 413)
    assert response.headers["X-Request-ID"] == "too-big-1"
    assert count_predictions() == before
