"""The OpenAPI document and the API agree: what the document allows is accepted, and what the
API refuses the document says, in JSON Schema where it can (a pattern, `oneOf`, `if`/`then`) and
in words where it cannot (422 naming the field). tests/api/test_fuzz.py checks the same with
generated requests; these are the cases it found, each pinned down.
"""

import json
import re
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from api.schemas.predictions import CANCEL_AFTER_PATTERN, CURSOR_PATTERN
from api.services.predictions import parse_cancel_after
from models.registry import CUSTOM, MODEL_TYPES
from tests.support.helpers import assert_problem, register_admin

EMBED = "quern/all-minilm-l6-v2"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture(scope="module")
def admin(client: TestClient) -> dict[str, str]:
    return register_admin(client)


def parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    parameters = document["paths"][path][method]["parameters"]
    found: dict[str, Any] = next(p for p in parameters if p["name"] == name)
    return found


def body_validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator of the document's component schema `name` (its $refs resolve within it)."""
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def field_schema(document: dict[str, Any], component: str, field: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][component]["properties"][field]
    return found


# --- 405: every method of the path, whichever route it is on -------------------------------


def test_a_405_allows_every_method_the_path_accepts(
    client: TestClient, auth: dict[str, str], document: dict[str, Any]
) -> None:
    for path, operations in document["paths"].items():
        allowed = {method.upper() for method in operations if method in HTTP_METHODS}
        concrete = re.sub(r"\{[^}]+\}", "x", path)  # routing takes any value
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - allowed):
            response = client.request(method, concrete, headers=auth)
            assert response.status_code == 405, (method, path, response.text)
            assert set(response.headers["Allow"].split(", ")) == allowed, (method, path)


# --- Nothing sent as text is null -----------------------------------------------------------


def test_no_header_query_or_form_field_is_documented_as_null(document: dict[str, Any]) -> None:
    """A client sends a null header, query parameter or form field as the text `null`."""
    null = {"type": "null"}
    forms = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                assert null not in param["schema"].get("anyOf", []), (method, path, param)
            form = operation.get("requestBody", {}).get("content", {})
            form = form.get("application/x-www-form-urlencoded")
            if form is not None:
                forms += 1
                name = form["schema"]["$ref"].rsplit("/", 1)[1]
                fields = document["components"]["schemas"][name]["properties"]
                for field, schema in fields.items():
                    assert null not in schema.get("anyOf", []), (method, path, field)
    assert forms  # the sign-in form (POST /v1/auth/token) at least: the check above ran


def test_the_sign_in_form_documents_what_it_reads(
    client: TestClient, document: dict[str, Any]
) -> None:
    """An empty form field is a missing one: the document says at least one character."""
    for field in ("username", "password"):
        assert field_schema(document, "Body_token_v1_auth_token_post", field)["minLength"] == 1
        form = {"username": "someone", "password": "something"} | {field: ""}
        assert_problem(client.post("/v1/auth/token", data=form), 422, field)


# --- The list cursor -----------------------------------------------------------------------


def test_the_cursor_pattern_matches_the_cursors_the_api_issues(
    client: TestClient, auth: dict[str, str], document: dict[str, Any]
) -> None:
    pattern = parameter(document, "/v1/predictions", "get", "cursor")["schema"]["pattern"]
    assert pattern == CURSOR_PATTERN
    for _ in range(3):
        body = {"model": EMBED, "input": {"text": "page"}}
        assert client.post("/v1/predictions", json=body, headers=auth).status_code == 201
    first = client.get("/v1/predictions?page_size=1", headers=auth).json()
    second = client.get(first["next"], headers=auth).json()
    for url in (first["next"], second["next"], second["previous"]):
        cursor = re.search(r"[?&]cursor=([^&]+)", url)
        assert cursor is not None and re.fullmatch(pattern, cursor.group(1)), url


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cursor=st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_cursor_the_document_allows_is_a_page(
    client: TestClient, auth: dict[str, str], cursor: str
) -> None:
    """Any position lists, whether or not a prediction is there: the pattern is the rule."""
    response = client.get("/v1/predictions", params={"cursor": cursor}, headers=auth)
    assert response.status_code == 200, (cursor, response.text)


# --- Cancel-After ---------------------------------------------------------------------------


def test_the_cancel_after_pattern_is_documented(document: dict[str, Any]) -> None:
    header = parameter(document, "/v1/predictions", "post", "Cancel-After")
    assert header["schema"]["pattern"] == CANCEL_AFTER_PATTERN
    assert "7 days" in header["description"]


@given(value=st.from_regex(CANCEL_AFTER_PATTERN, fullmatch=True))
def test_every_cancel_after_the_document_allows_is_a_deadline(value: str) -> None:
    assert timedelta(seconds=1) <= parse_cancel_after(value) <= timedelta(days=7)


def test_the_cancel_after_pattern_admits_every_canonical_duration_in_range() -> None:
    """Hours, minutes, seconds (each after the first under 60): in the pattern exactly when
    from 1 s to 7 days; and each single unit likewise."""
    week = timedelta(days=7)
    for hours, minutes, seconds in product(range(1, 170), (0, 1, 30, 59), (0, 1, 59)):
        text = f"{hours}h{minutes}m{seconds}s"
        in_range = timedelta(hours=hours, minutes=minutes, seconds=seconds) <= week
        assert (re.fullmatch(CANCEL_AFTER_PATTERN, text) is not None) == in_range, text
    for count, unit in product(range(0, 604_802), ("s", "")):
        text = f"{count}{unit}"
        assert (re.fullmatch(CANCEL_AFTER_PATTERN, text) is not None) == (1 <= count <= 604_800), (
            text
        )
    for count in range(0, 10_082):
        text = f"{count}m"
        assert (re.fullmatch(CANCEL_AFTER_PATTERN, text) is not None) == (1 <= count <= 10_080), (
            text
        )


# --- Body rules across fields ---------------------------------------------------------------


def version_id(client: TestClient, auth: dict[str, str]) -> str:
    model = client.get(f"/v1/models/{EMBED}", headers=auth).json()
    found: str = model["latest_version"]["id"]
    return found


ONE_VERSION = {
    "model_type": CUSTOM,
    "weights": "package://tests/weights.bin",
    "input_schema": {"type": "object"},
}


@pytest.mark.parametrize(
    ("component", "path", "body", "field"),
    [
        ("PredictionCreate", "/v1/predictions", {"input": {"text": "x"}}, "model"),
        (
            "PredictionCreate",
            "/v1/predictions",
            {"model": EMBED, "version": "<version>", "input": {"text": "x"}},
            "model",
        ),
        (
            "PredictionCreate",
            "/v1/predictions",
            {"version": None, "model": None, "input": {"text": "x"}},
            "model",
        ),
        (
            "PredictionCreate",
            "/v1/predictions",
            {"model": EMBED, "input": {"text": "x"}, "webhook_events_filter": ["completed"]},
            "webhook_events_filter",
        ),
        (
            "PredictionRequest",
            f"/v1/models/{EMBED}/predictions",
            {"input": {"text": "x"}, "webhook": None, "webhook_events_filter": ["completed"]},
            "webhook_events_filter",
        ),
        ("ModelCreate", "/v1/models", {"name": "hidden", "visibility": "private"}, "visibility"),
        ("VersionCreate", "/v1/models/x/y/versions", ONE_VERSION, "predictor"),
        (
            "VersionCreate",
            "/v1/models/x/y/versions",
            ONE_VERSION | {"model_type": next(iter(MODEL_TYPES)), "predictor": "a.b:C"},
            "predictor",
        ),
        (
            "VersionCreate",
            "/v1/models/x/y/versions",
            ONE_VERSION | {"predictor": "a.b:C", "input_schema": {}},
            "input_schema",
        ),
    ],
)
def test_what_the_document_refuses_is_422_naming_the_field(
    client: TestClient,
    admin: dict[str, str],
    document: dict[str, Any],
    component: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    if body.get("version") == "<version>":
        body = body | {"version": version_id(client, admin)}
    assert not body_validator(document, component).is_valid(body), body
    assert_problem(client.post(path, json=body, headers=admin), 422, field)


@pytest.mark.parametrize(
    "body",
    [
        {"version": None, "model": EMBED, "input": {"text": "x"}},
        {"version": "<version>", "model": None, "input": {"text": "x"}},
        {"model": EMBED, "input": {"text": "x"}, "webhook": None, "webhook_events_filter": None},
    ],
)
def test_what_the_document_allows_is_created(
    client: TestClient, auth: dict[str, str], document: dict[str, Any], body: dict[str, Any]
) -> None:
    if body.get("version") == "<version>":
        body = body | {"version": version_id(client, auth)}
    assert body_validator(document, "PredictionCreate").is_valid(body), body
    response = client.post("/v1/predictions", json=body, headers=auth)
    assert response.status_code == 201, response.text


# --- Rules JSON Schema cannot state: in words, and 422 naming the field ----------------------


def test_an_expiry_that_is_not_in_the_future_is_documented_and_422(
    client: TestClient, auth: dict[str, str], document: dict[str, Any]
) -> None:
    description = field_schema(document, "TokenCreate", "expires_at")["description"]
    assert "in the future" in description and "422" in description
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    body = {"name": "late", "expires_at": past}
    assert body_validator(document, "TokenCreate").is_valid(body)
    response = client.post("/v1/tokens", json=body, headers=auth)
    assert_problem(response, 422, "expires_at")
    assert "future" in json.dumps(response.json()["invalid_fields"])


def test_a_webhook_the_guard_refuses_is_documented_and_422(
    client: TestClient, auth: dict[str, str], document: dict[str, Any]
) -> None:
    description = field_schema(document, "PredictionRequest", "webhook")["description"]
    assert "public address" in description and "422" in description
    body = {"model": EMBED, "input": {"text": "x"}, "webhook": "http://169.254.169.254/"}
    assert body_validator(document, "PredictionCreate").is_valid(body)
    assert_problem(client.post("/v1/predictions", json=body, headers=auth), 422, "webhook")


def test_an_idempotency_key_reused_for_another_request_is_documented_and_422(
    client: TestClient, auth: dict[str, str], document: dict[str, Any]
) -> None:
    header = parameter(document, "/v1/predictions", "post", "Idempotency-Key")
    assert "422" in header["description"]
    headers = auth | {"Idempotency-Key": "contract-1"}
    first = {"model": EMBED, "input": {"text": "one"}}
    assert client.post("/v1/predictions", json=first, headers=headers).status_code == 201
    other = {"model": EMBED, "input": {"text": "two"}}
    response = client.post("/v1/predictions", json=other, headers=headers)
    assert_problem(response, 422, "Idempotency-Key")
