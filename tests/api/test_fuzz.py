"""Fuzzing: the whole API against its own OpenAPI document (schemathesis).

Every operation in /openapi.json gets generated requests (boundary and invalid "coverage"
cases, then random valid and invalid ones), sent in-process to the ASGI app with a
real user's bearer token, and again with an administrator's. Every response must not be a 5xx,
and must have a status code and content type that the document lists for the operation and a
body matching the documented schema. A request the document allows must be accepted (refused
only for a rule the document can state in words alone: CHECKED_AT_RUNTIME), and a method a path
does not take is 405 with an `Allow` of every method it does. What the API accepts is then
followed up the way a client would (the new prediction read, streamed and canceled, the new API
token used and revoked), and the caller's reads must keep working: data accepted once must not
break them later.

Bounded and reproducible: a few examples per operation, derandomized. Not a state machine
(schemathesis' stateful mode): its steps depend on the database's contents, which every run
changes, so Hypothesis can neither replay nor bound it.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.main import app
from tests.support.helpers import register_admin, register_and_login

# /ready answers 503 by design when no worker is up (none is, in-process): that is its answer,
# not a server error. It is tested in tests/api/test_ops.py and tests/system/test_faults.py.
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/ready")

# Rules the document states in words because JSON Schema cannot: whether the model or version
# exists and what its input must be, whether a webhook's host resolves to a public address,
# whether an idempotency key was used for another request, whether an expiry is still in the
# future, whether an input schema is a valid JSON Schema, whether an upload's bytes are of its
# declared type and its metadata a JSON object. Only for these may a request the
# document allows be refused: 422 naming the field.
# The OpenAI-compatible API (/openai/v1) refuses with a 400 naming one `param` instead: what
# the model's own input schema bounds (the longest message, the most tokens) is checked there.
CHECKED_AT_RUNTIME: dict[str, set[str]] = {
    "POST /v1/predictions": {"model", "version", "input", "webhook", "Idempotency-Key"},
    "POST /v1/models/{owner}/{name}/predictions": {"input", "webhook", "Idempotency-Key"},
    "POST /v1/tokens": {"expires_at"},
    "POST /v1/models/{owner}/{name}/versions": {"input_schema", "cache"},
    # The metadata must be a JSON object; the declared type must be what the bytes are.
    "POST /v1/files": {"metadata", "type"},
    "POST /openai/v1/chat/completions": {"messages", "max_tokens", "max_completion_tokens"},
    "POST /openai/v1/embeddings": {"input"},
}


@schemathesis.check
def schema_valid_requests_are_accepted(
    ctx: Any, response: schemathesis.Response, case: Case
) -> bool | None:
    """positive_data_acceptance, but for a 422 that names only fields of CHECKED_AT_RUNTIME
    (or an OpenAI-style 400 whose `param` is one)."""
    allowed = CHECKED_AT_RUNTIME.get(case.operation.label, set())
    if response.status_code == 422:
        fields = response.json().get("invalid_fields", [])
        named = {re.split(r"[.\[]", item["field"])[0] for item in fields}
        if named and named <= allowed:
            return None
    if case.operation.path.startswith("/openai/"):
        error = response.json().get("error") or {} if response.status_code >= 400 else {}
        if (
            response.status_code == 400
            and re.split(r"[.\[]", error.get("param") or "")[0] in allowed
        ):
            return None
        # Accepted and created; no worker runs here, so it ran out of time (and was canceled).
        if response.status_code == 408 and error.get("code") == "timeout":
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    schema_valid_requests_are_accepted,  # "valid by the document, refused by the API"
    unsupported_method,  # an undocumented method is 405 with `Allow`...
    allow_header_conformance,  # ...which lists every documented method of the path
]
MAX_EXAMPLES = 25

# Reads any signed-in caller may make at any time: 200, whatever was written before.
READS = ["/v1/account", "/v1/tokens", "/v1/models", "/v1/predictions"]

# The document cannot say which models exist or what their inputs are (each version has its own
# input schema), so generated creates almost never name a real model. Half the positive ones get
# a built-in model (db/seed.py) with a generated input instead, so the fuzzing reaches past the
# model lookup to input validation, storage, and what follows a create.
REAL_MODEL_BODIES = st.one_of(
    st.fixed_dictionaries(
        {
            "model": st.just("quern/all-minilm-l6-v2"),
            "input": st.fixed_dictionaries({"text": st.text(min_size=1)}),
        }
    ),
    st.fixed_dictionaries(
        {
            "model": st.just("quern/smollm2-135m-instruct"),
            "input": st.fixed_dictionaries(
                {"prompt": st.text(min_size=1)},
                optional={
                    "max_new_tokens": st.integers(1, 512),
                    "temperature": st.floats(0, 2),
                    "top_p": st.floats(0, 1, exclude_min=True),
                    "seed": st.integers(0, 2**31 - 1),
                },
            ),
        }
    ),
)


# The same for the OpenAI-compatible API: half its positive cases name a built-in model that
# serves the endpoint. No worker runs, so each waits out QUERN_OPENAI_TIMEOUT_S (lowered below).
REAL_OPENAI_MODELS = {
    "POST /openai/v1/chat/completions": "quern/smollm2-135m-instruct",
    "POST /openai/v1/embeddings": "quern/all-minilm-l6-v2",
}


@schema.hook
def flatmap_case(context: Any, case: Case) -> Any:
    label = None if context.operation is None else context.operation.label
    if (
        label not in ("POST /v1/predictions", *REAL_OPENAI_MODELS)
        or case.meta is None
        or case.meta.generation.mode != GenerationMode.POSITIVE
    ):
        return st.just(case)

    def with_real_model(body: dict[str, Any]) -> Case:
        case.body = body
        return case

    if label in REAL_OPENAI_MODELS and isinstance(case.body, dict):
        real = dict(case.body, model=REAL_OPENAI_MODELS[label])
        return st.one_of(st.just(case), st.just(real).map(with_real_model))
    return st.one_of(st.just(case), REAL_MODEL_BODIES.map(with_real_model))


@pytest.fixture(scope="module", autouse=True)
def short_openai_waits() -> Any:
    """No worker answers here: an OpenAI request that reaches a real model times out (408, or
    a stream's `error`) after a quarter of a second instead of ten minutes."""
    from api.settings import get_api_settings

    settings = get_api_settings()
    before, settings.openai_timeout_s = settings.openai_timeout_s, 0.25
    yield
    settings.openai_timeout_s = before


_PREFER_WAIT = re.compile(r"wait", re.IGNORECASE)


def bound_waits(case: Case) -> None:
    """No worker runs in these tests, so `Prefer: wait` would hold a create for its full
    N seconds (up to 60): a generated Prefer that mentions waiting asks for one second."""
    prefer = case.headers.get("Prefer") if case.headers else None
    if isinstance(prefer, str) and _PREFER_WAIT.search(prefer):
        case.headers["Prefer"] = "wait=1"


def call(
    method: str, path: str, headers: dict[str, str], **path_parameters: str
) -> schemathesis.Response:
    """One documented call with fixed inputs, held to the same checks."""
    case = schema[path][method].Case(path_parameters=path_parameters)
    return case.call_and_validate(headers=headers, checks=CHECKS)


def operations_on(parameter: str, method: str) -> list[str]:
    """The documented paths taking this path parameter with this method, e.g. every GET of a
    prediction (the prediction itself, its event stream...)."""
    paths: dict[str, Any] = schema.raw_schema["paths"]
    return [p for p, ops in paths.items() if f"{{{parameter}}}" in p and method.lower() in ops]


def follow_up(case: Case, response: schemathesis.Response, headers: dict[str, str]) -> None:
    """After an accepted write: use what it made, then check the caller's reads still work."""
    if case.method.upper() == "GET" or not 200 <= response.status_code < 300:
        return
    label = case.operation.label
    if label == "POST /v1/predictions":
        prediction_id = response.json()["id"]
        # Canceled first: then it is finished, and its event stream (if any) replays and ends.
        canceled = call(
            "POST", "/v1/predictions/{prediction_id}/cancel", headers, prediction_id=prediction_id
        )
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", (
            canceled.text
        )
        for path in operations_on("prediction_id", "GET"):
            read = call("GET", path, headers, prediction_id=prediction_id)
            assert read.status_code == 200, (path, read.text)
    if label == "POST /v1/tokens":
        token = response.json()
        expires_at = token["expires_at"]
        if expires_at is None or datetime.fromisoformat(expires_at) > datetime.now(UTC) + timedelta(
            minutes=1
        ):
            signed_in = call("GET", "/v1/account", {"Authorization": f"Bearer {token['token']}"})
            assert signed_in.status_code == 200, (token, signed_in.text)
        revoked = call("DELETE", "/v1/tokens/{token_id}", headers, token_id=token["id"])
        assert revoked.status_code == 204, revoked.text
    for path in READS:
        read = call("GET", path, headers)
        assert read.status_code == 200, (label, path, read.text)


@pytest.fixture(scope="module")
def role_headers(client: Any) -> dict[str, dict[str, str]]:
    return {"user": register_and_login(client), "admin": register_admin(client)}


# Hundreds of generated requests (a minute): the whole suite's, not `make test-fast`'s.
@pytest.mark.slow
@pytest.mark.parametrize("role", ["user", "admin"])
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_response_is_documented(
    case: Case, role: str, role_headers: dict[str, dict[str, str]]
) -> None:
    headers = role_headers[role]
    bound_waits(case)
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    follow_up(case, response, headers)


# Inputs at the edges of what PostgreSQL stores, which the generators rarely reach.
EDGE_INPUTS: list[tuple[str, dict[str, Any]]] = [
    # Stored fine, but year 10000 in UTC: then unreadable as a Python datetime.
    ("/v1/tokens", {"name": "far", "expires_at": "9999-12-31T23:00:00-05:00"}),
    ("/v1/tokens", {"name": "latest", "expires_at": "9998-12-31T23:59:59+14:00"}),
    ("/v1/tokens", {"name": "lone \ud800 surrogate"}),
    ("/v1/predictions", {"model": "quern/all-minilm-l6-v2", "input": {"text": "NUL \x00"}}),
    ("/v1/predictions", {"model": "quern/all-minilm-l6-v2", "input": {"text": "\udfff"}}),
    ("/v1/predictions", {"model": "quern/all-minilm-l6-v2", "input": {"text": "x" * 20_001}}),
    (
        "/v1/predictions",
        {"model": "quern/smollm2-135m-instruct", "input": {"prompt": "x", "seed": 10**40}},
    ),
    ("/v1/models", {"name": "nul", "description": "\x00"}),
    ("/v1/models", {"name": "x" * 101}),
]


@pytest.mark.parametrize("role", ["user", "admin"])
@pytest.mark.parametrize(("path", "body"), EDGE_INPUTS)
def test_edge_inputs_are_documented(
    path: str, body: dict[str, Any], role: str, role_headers: dict[str, dict[str, str]]
) -> None:
    headers = role_headers[role]
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    follow_up(case, response, headers)
