"""OpenAI's official Python client (`openai`), unchanged, against the live stack (a uvicorn API
and a real Celery worker running the built-in models), pointed at /openai/v1 as the README
shows. Each request is a Quern prediction: read back through Quern's own API here."""

import time
from typing import Any

import openai
import pytest

from tests.support.helpers import register_and_login
from tests.support.live import LiveStack

pytestmark = pytest.mark.slow

LLM = "quern/smollm2-135m-instruct"
EMBEDDINGS = "quern/all-minilm-l6-v2"
ASK = [{"role": "user", "content": "Name three colours."}]


def client_for(live: LiveStack, token: str | None = None) -> openai.OpenAI:
    """As the README shows it; no retries, so a refusal shows as it is."""
    token = token or live.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=token, max_retries=0)


@pytest.fixture(scope="module")
def client(live: LiveStack) -> openai.OpenAI:
    return client_for(live)


def prediction(live: LiveStack, completion_id: str) -> dict[str, Any]:
    """The Quern prediction behind a `chatcmpl-<id>`."""
    prediction_id = completion_id.removeprefix("chatcmpl-")
    response = live.client.get(f"/v1/predictions/{prediction_id}", headers=live.headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_a_chat_completion(live: LiveStack, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=LLM,
        messages=ASK,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length") and completion.model == LLM
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stored = prediction(live, completion.id)
    assert stored["source"] == "openai" and stored["status"] == "succeeded"
    assert stored["output"] == choice.message.content
    assert stored["version"] == completion.system_fingerprint
    assert stored["metrics"]["input_token_count"] == usage.prompt_tokens
    assert stored["metrics"]["output_token_count"] == usage.completion_tokens
    assert (choice.finish_reason == "length") == (usage.completion_tokens == 24)
    listed = live.client.get("/v1/predictions", params={"source": "openai"}, headers=live.headers)
    assert stored["id"] in [p["id"] for p in listed.json()["results"]]


def test_a_chat_with_a_system_message_and_a_stop_sequence(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You count. Answer with numbers separated by commas."},
        {"role": "user", "content": "Count from 1 to 10."},
    ]
    completion = client.chat.completions.create(
        model=LLM,
        messages=messages,  # type: ignore[arg-type]
        max_completion_tokens=40,
        temperature=0,
        stop=["5"],
    )
    text = completion.choices[0].message.content or ""
    assert "5" not in text and completion.choices[0].finish_reason == "stop"


def test_a_streamed_chat_completion_joins_to_the_stored_output(
    live: LiveStack, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=LLM,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # token by token, not one piece at the end
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert {c.id for c in chunks} == {chunks[0].id}
    stored = prediction(live, chunks[0].id)
    assert stored["status"] == "succeeded" and stored["output"] == text
    assert stored["metrics"]["output_token_count"] == chunks[-1].usage.completion_tokens


def quern_embedding(live: LiveStack, text: str) -> list[float]:
    response = live.client.post(
        "/v1/predictions",
        json={"model": EMBEDDINGS, "input": {"text": text}},
        headers=live.headers | {"Prefer": "wait"},
    )
    assert response.status_code == 201 and response.json()["status"] == "succeeded"
    output: list[float] = response.json()["output"]
    return output


def test_embeddings_of_a_list_equal_querns_own(live: LiveStack, client: openai.OpenAI) -> None:
    texts = ["Quern grinds grain.", "A millstone turns.", "Bread"]
    floats = client.embeddings.create(model=EMBEDDINGS, input=texts, encoding_format="float")
    encoded = client.embeddings.create(model=EMBEDDINGS, input=texts)  # base64 by default
    own = [quern_embedding(live, text) for text in texts]
    for answer in (floats, encoded):
        assert [e.index for e in answer.data] == [0, 1, 2] and answer.model == EMBEDDINGS
        for embedding, expected in zip(answer.data, own, strict=True):
            assert len(embedding.embedding) == 384
            # Batched with others or alone, the same text embeds the same, to float32 noise.
            assert (
                max(abs(a - b) for a, b in zip(embedding.embedding, expected, strict=True)) < 1e-5
            )
        assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(texts)
    listed = live.client.get(
        "/v1/predictions", params={"source": "openai", "model": EMBEDDINGS}, headers=live.headers
    ).json()["results"]
    made = [p for p in listed if p["input"]["text"] in texts]
    assert len(made) == 6 and {p["status"] for p in made} == {"succeeded"}
    assert sum(p["metrics"]["input_token_count"] for p in made) == 2 * floats.usage.prompt_tokens
    single = client.embeddings.create(model=EMBEDDINGS, input=texts[0], encoding_format="float")
    assert len(single.data) == 1


def test_models_lists_both_built_in_models(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {LLM, EMBEDDINGS} <= ids
    assert client.models.retrieve(LLM).owned_by == "quern"


def test_an_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="quern/no-such-model", messages=ASK)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-4o", input="x")


def test_a_bad_parameter_is_a_bad_request_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=LLM, messages=ASK, max_tokens=100_000)  # type: ignore[arg-type]
    assert caught.value.param == "max_tokens" and "512" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=LLM, messages=ASK, n=2)  # type: ignore[arg-type]
    assert caught.value.param == "n"


def test_a_revoked_token_is_refused(live: LiveStack) -> None:
    made = live.client.post("/v1/tokens", json={"name": "openai"}, headers=live.headers).json()
    client = client_for(live, made["token"])
    assert client.models.list().data
    revoked = live.client.delete(f"/v1/tokens/{made['id']}", headers=live.headers)
    assert revoked.status_code == 204
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=LLM, messages=ASK)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_api_key"


def test_a_client_that_hangs_up_mid_stream_cancels_the_prediction(
    live: LiveStack, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Tell a very long story about a mill."}],
        max_tokens=512,
        temperature=0.8,
        seed=1,
        stream=True,
    )
    first = next(iter(stream))
    content = []
    for chunk in stream:  # a few pieces of text: it is running
        if chunk.choices and chunk.choices[0].delta.content:
            content.append(chunk)
        if len(content) >= 3:
            break
    stream.close()  # hangs up
    deadline = time.monotonic() + 60
    while (stored := prediction(live, first.id))["status"] == "processing":
        assert time.monotonic() < deadline, stored
        time.sleep(0.2)
    assert stored["status"] == "canceled" and stored["source"] == "openai", stored


def test_a_client_that_gives_up_waiting_cancels_the_prediction(live: LiveStack) -> None:
    headers = register_and_login(live.client)  # a caller of its own: its one prediction
    client = client_for(live, headers["Authorization"].removeprefix("Bearer "))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=1.0).chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "Tell a very long story about a mill."}],
            max_tokens=512,
        )
    deadline = time.monotonic() + 60
    while True:
        (stored,) = live.client.get("/v1/predictions", headers=headers).json()["results"]
        if stored["status"] not in ("starting", "processing"):
            break
        assert time.monotonic() < deadline, stored
        time.sleep(0.2)
    assert stored["status"] == "canceled" and stored["source"] == "openai", stored
