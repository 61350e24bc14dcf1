"""The OpenAI-compatible API in process (no worker): what it accepts, what it refuses and how
(OpenAI's error shape, only under /openai/v1), and the predictions it makes. Answers from a
real model, through the official `openai` client: tests/system/test_openai_client.py."""

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import rate_limits
from api.schemas.openai_compat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreate,
    EmbeddingList,
)
from api.schemas.predictions import PredictionOut
from api.services import openai_compat
from api.settings import ApiSettings, get_api_settings
from tests.support.helpers import assert_problem, count_predictions, register_and_login

LLM = "quern/smollm2-135m-instruct"
EMBED = "quern/all-minilm-l6-v2"
CHAT = "/openai/v1/chat/completions"
EMBEDDINGS = "/openai/v1/embeddings"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiSettings]:
    """No worker runs here: a request that reaches a model times out at once."""
    settings = get_api_settings()
    monkeypatch.setattr(settings, "openai_timeout_s", 0.3)
    yield settings


def openai_error(response: Any, status: int, param: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape, naming `param`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    error: dict[str, Any] = response.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"} and error["message"], error
    assert error["param"] == param, error
    return error


def mine(client: TestClient, auth: dict[str, str], **filters: str) -> list[dict[str, Any]]:
    response = client.get("/v1/predictions", params=filters, headers=auth)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


# --- Errors, in OpenAI's shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer qrn_not-a-token"}, {"Authorization": "Bearer x.y.z"}]
)
def test_a_missing_or_bad_token_is_401_invalid_api_key(
    client: TestClient, headers: dict[str, str]
) -> None:
    before = count_predictions()
    response = client.post(CHAT, json={"model": LLM, "messages": HI}, headers=headers)
    error = openai_error(response, 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert openai_error(client.get("/openai/v1/models", headers=headers), 401)
    assert count_predictions() == before


def test_a_revoked_api_token_is_401(client: TestClient, auth: dict[str, str]) -> None:
    token = client.post("/v1/tokens", json={"name": "openai"}, headers=auth).json()
    bearer = {"Authorization": f"Bearer {token['token']}"}
    assert client.get("/openai/v1/models", headers=bearer).status_code == 200
    assert client.delete(f"/v1/tokens/{token['id']}", headers=auth).status_code == 204
    error = openai_error(client.get("/openai/v1/models", headers=bearer), 401)
    assert error["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("path", "model"),
    [(CHAT, "quern/no-such-model"), (CHAT, "gpt-4o"), (CHAT, "a" * 26), (EMBEDDINGS, "nobody/x")],
)
def test_an_unknown_model_is_404_model_not_found(
    client: TestClient, auth: dict[str, str], path: str, model: str
) -> None:
    body = {"model": model, "messages": HI} if path == CHAT else {"model": model, "input": "x"}
    error = openai_error(client.post(path, json=body, headers=auth), 404, "model")
    assert error["code"] == "model_not_found" and model in error["message"]


def test_a_model_of_the_wrong_kind_is_404_naming_the_model(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = client.post(CHAT, json={"model": EMBED, "messages": HI}, headers=auth)
    assert "not a chat model" in openai_error(response, 404, "model")["message"]
    response = client.post(EMBEDDINGS, json={"model": LLM, "input": "x"}, headers=auth)
    assert "not an embeddings model" in openai_error(response, 404, "model")["message"]
    diffusion = {"model": "quern/tiny-stable-diffusion", "messages": HI}
    openai_error(client.post(CHAT, json=diffusion, headers=auth), 404, "model")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
        ),
        # Refused by the model's own input schema, named as the request names it:
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"max_completion_tokens": 100_000, "max_tokens": 5}, "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "x" * 8001}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 8000}] * 2}]},
            "messages[0].content",
        ),
    ],
)
def test_a_bad_parameter_is_400_naming_it_and_creates_nothing(
    client: TestClient, auth: dict[str, str], change: dict[str, Any], param: str
) -> None:
    before = count_predictions()
    response = client.post(CHAT, json={"model": LLM, "messages": HI} | change, headers=auth)
    error = openai_error(response, 400, param)
    assert error["type"] == "invalid_request_error" and param.split("[")[0] in error["message"]
    assert count_predictions() == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": [1, 2, 3]}, "input"),  # token arrays
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 8}, "dimensions"),
    ],
)
def test_a_bad_embeddings_parameter_is_400_naming_it(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], param: str
) -> None:
    before = count_predictions()
    response = client.post(EMBEDDINGS, json={"model": EMBED} | body, headers=auth)
    openai_error(response, 400, param)
    assert count_predictions() == before


def test_malformed_json_is_400(client: TestClient, auth: dict[str, str]) -> None:
    headers = auth | {"Content-Type": "application/json"}
    error = openai_error(client.post(CHAT, content=b"{", headers=headers), 400)
    assert "not valid JSON" in error["message"]


def test_a_body_too_large_is_413_in_openai_shape(client: TestClient, auth: dict[str, str]) -> None:
    big = "x" * (get_api_settings().max_body_bytes + 1)
    response = client.post(EMBEDDINGS, json={"model": EMBED, "input": big}, headers=auth)
    openai_error(response, 413)


def test_unknown_paths_and_methods_answer_in_openai_shape(
    client: TestClient, auth: dict[str, str]
) -> None:
    error = openai_error(client.post("/openai/v1/completions", json={}, headers=auth), 404)
    assert "POST /openai/v1/completions" in error["message"]
    response = client.get(CHAT, headers=auth)
    openai_error(response, 405)
    assert response.headers["Allow"] == "POST"


def test_the_rest_of_the_api_keeps_problem_details(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert_problem(client.get("/v1/predictions/nope", headers=auth), 404)
    assert_problem(client.post("/v1/predictions", json={"model": LLM}, headers=auth), 422, "input")
    assert_problem(client.get("/v1/account", headers={"Authorization": "Bearer x"}), 401)


def test_the_in_flight_limit_is_429_rate_limit_exceeded(
    client: TestClient, settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = register_and_login(client)
    monkeypatch.setattr(settings, "max_in_flight_per_user", 2)
    body = {"model": EMBED, "input": ["a", "b", "c"]}
    response = client.post(EMBEDDINGS, json=body, headers=auth)  # three at once: too many ever
    openai_error(response, 400, "input")
    monkeypatch.setattr(settings, "openai_timeout_s", 30)
    monkeypatch.setattr(settings, "max_in_flight_per_user", 3)
    client.post("/v1/predictions", json={"model": EMBED, "input": {"text": "busy"}}, headers=auth)
    response = client.post(EMBEDDINGS, json=body, headers=auth)  # 1 + 3 > 3: none of them
    error = openai_error(response, 429)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert int(response.headers["Retry-After"]) >= 1
    assert len(mine(client, auth)) == 1


def test_the_rate_limit_is_429_rate_limit_exceeded(
    client: TestClient, settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = register_and_login(client)
    monkeypatch.setattr(settings, "rate_limit_write", "1/minute")
    rate_limits._limiter.cache_clear()
    body = {"model": LLM, "messages": HI}
    first = client.post(CHAT, json=body, headers=auth)
    openai_error(first, 408)  # counted, created, timed out
    assert first.headers["X-RateLimit-Remaining"] == "0"
    refused = client.post(CHAT, json=body, headers=auth)
    error = openai_error(refused, 429)
    assert error["code"] == "rate_limit_exceeded" and "Retry-After" in refused.headers


# --- Requests are predictions -----------------------------------------------------------------


def test_a_chat_completion_is_a_prediction_from_openai_canceled_when_out_of_time(
    client: TestClient, auth: dict[str, str], settings: ApiSettings
) -> None:
    body = {
        "model": LLM,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": t} for t in "ab"]},
        ],
        "max_tokens": 7,
        "temperature": 0,
        "seed": 3,
        "stop": "\n",
        "user": "someone",
        "metadata": {"k": "v"},
        "n": 1,
        "presence_penalty": 0,
        "response_format": {"type": "text"},
    }  # fmt: skip
    error = openai_error(client.post(CHAT, json=body, headers=auth), 408)
    assert error["code"] == "timeout" and "QUERN_OPENAI_TIMEOUT_S" in error["message"]
    (prediction,) = mine(client, auth, source="openai")
    assert prediction["model"] == LLM and prediction["source"] == "openai"
    assert prediction["status"] == "canceled"  # nobody would read it: not left to run
    assert prediction["input"] == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a\nb"},
        ],
        "max_new_tokens": 7,
        "temperature": 0,
        "seed": 3,
        "stop": ["\n"],
        "top_p": 0.9,  # the model's default
    }
    assert mine(client, auth, source="api") == [] and mine(client, auth) == [prediction]


def test_a_version_id_names_the_model_too(
    client: TestClient, auth: dict[str, str], settings: ApiSettings
) -> None:
    version = client.get(f"/v1/models/{LLM}", headers=auth).json()["latest_version"]["id"]
    openai_error(client.post(CHAT, json={"model": version, "messages": HI}, headers=auth), 408)
    (prediction,) = mine(client, auth, source="openai")
    assert prediction["version"] == version


def test_a_list_of_texts_is_one_prediction_per_text_created_together(
    client: TestClient, auth: dict[str, str], settings: ApiSettings
) -> None:
    texts = ["one", "two", "three"]
    body = {"model": EMBED, "input": texts, "encoding_format": "base64"}
    openai_error(client.post(EMBEDDINGS, json=body, headers=auth), 408)
    made = mine(client, auth, source="openai")
    assert sorted(p["input"]["text"] for p in made) == sorted(texts)
    assert {p["status"] for p in made} == {"canceled"}
    assert len({p["created_at"] for p in made}) == 1  # one statement


def test_a_stream_out_of_time_ends_with_an_error_and_cancels(
    client: TestClient, auth: dict[str, str], settings: ApiSettings
) -> None:
    body = {"model": LLM, "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    response = client.post(CHAT, json=body, headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in response.text.split("\n\n") if line]
    first = ChatCompletionChunk.model_validate_json(events[0])
    assert first.choices[0].delta.role == "assistant" and first.usage is None
    assert json.loads(events[-1])["error"]["code"] == "timeout" and "[DONE]" not in events
    (prediction,) = mine(client, auth, source="openai")
    assert first.id == f"chatcmpl-{prediction['id']}" and prediction["status"] == "canceled"


def test_models_lists_what_serves_each_endpoint(client: TestClient, auth: dict[str, str]) -> None:
    listed = client.get("/openai/v1/models", headers=auth).json()
    assert listed["object"] == "list"
    ids = {card["id"] for card in listed["data"]}
    assert {LLM, EMBED} <= ids and "quern/tiny-stable-diffusion" not in ids
    card = client.get(f"/openai/v1/models/{LLM}", headers=auth).json()
    assert card == next(c for c in listed["data"] if c["id"] == LLM)
    assert card["object"] == "model" and card["owned_by"] == "quern" and card["created"] > 0
    response = client.get("/openai/v1/models/quern/tiny-stable-diffusion", headers=auth)
    assert openai_error(response, 404, "model")["code"] == "model_not_found"


# --- The answers, from finished predictions --------------------------------------------------


def finished(**fields: Any) -> PredictionOut:
    base = {
        "id": "p" * 26, "model": LLM, "version": "v" * 26, "input": {"max_new_tokens": 4},
        "output": "Hello", "logs": "", "error": None, "status": "succeeded",
        "created_at": "2026-01-01T00:00:00Z", "started_at": None, "completed_at": None,
        "deadline": None, "urls": {"get": "", "cancel": "", "stream": ""},
        "metrics": {"input_token_count": 9, "output_token_count": 2},
        "webhook": None, "webhook_events_filter": None, "source": "openai",
    }  # fmt: skip
    return PredictionOut.model_validate(base | fields)


def test_a_finished_prediction_is_a_chat_completion() -> None:
    response = openai_compat._chat_completion(finished())
    completion = ChatCompletion.model_validate_json(bytes(response.body))
    assert completion.id == f"chatcmpl-{'p' * 26}" and completion.system_fingerprint == "v" * 26
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.model_dump() == {
        "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11
    }  # fmt: skip
    used_all = finished(metrics={"input_token_count": 9, "output_token_count": 4})
    assert openai_compat.finish_reason(used_all) == "length"


def test_without_counts_from_the_worker_usage_is_estimated() -> None:
    prediction = finished(metrics={}, output="x" * 9, input={"messages": [{"content": "abcd"}]})
    assert openai_compat.chat_usage(prediction) == {
        "prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4
    }  # fmt: skip


def test_a_failed_prediction_is_an_error() -> None:
    from models.text_generation import prompt_too_long  # the worker's message, recognised

    assert openai_compat.PROMPT_TOO_LONG.match(prompt_too_long(3000))
    too_long = finished(status="failed", output=None, error="The prompt is 3000 tokens long; …")
    error = json.loads(bytes(openai_compat._chat_completion(too_long).body))["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    crashed = finished(status="failed", output=None, error="RuntimeError: boom")
    response = openai_compat._chat_completion(crashed)
    assert response.status_code == 500 and b"boom" in bytes(response.body)


def test_embeddings_as_floats_or_little_endian_float32_base64() -> None:
    vector = [0.25, -1.5, 3.0]
    done = [
        finished(model=EMBED, input={"text": "ab"}, output=vector,
                 metrics={"input_token_count": 4}),
        finished(model=EMBED, input={"text": "abcdefgh"}, output=vector, metrics={}),
    ]  # fmt: skip
    floats = EmbeddingList.model_validate_json(
        bytes(openai_compat._embedding_list(done, encoding="float").body)
    )
    assert [e.embedding for e in floats.data] == [vector, vector]
    assert [e.index for e in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == 4 + 2  # the second estimated: 8 characters
    encoded = EmbeddingList.model_validate_json(
        bytes(openai_compat._embedding_list(done, encoding="base64").body)
    )
    raw = base64.b64decode(str(encoded.data[0].embedding))
    assert list(struct.unpack("<3f", raw)) == vector


def test_chat_input_maps_openai_parameters_to_the_models() -> None:
    body = ChatCompletionCreate.model_validate(
        {"model": LLM, "messages": HI, "max_tokens": 5, "max_completion_tokens": 6, "top_p": 0}
    )
    item, params = openai_compat.chat_input(body)
    assert item == {"messages": HI, "max_new_tokens": 6, "temperature": 0}
    assert params["max_new_tokens"] == "max_completion_tokens"
    assert params["temperature"] == "top_p"  # top_p 0 is greedy
