"""Signed URLs (db/signed_urls.py): `urls.stream` and file outputs open without a token, as
Replicate's do; each grants its one resource until it expires, and nothing else. A tampered,
expired or other resource's signature is 403; no credentials at all is still 401; a token
still opens the plain URLs."""

import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from common.prediction_object import prediction_object
from db.ids import new_id
from db.repositories import files, models, predictions
from db.seed import SYSTEM_USER
from db.session import session_scope
from db.signed_urls import get_url_signer
from db.tables import Prediction, PredictionStatus
from tests.support.helpers import assert_problem, register_admin, register_and_login

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64)
PUBLIC_URL = "http://127.0.0.1:8000"  # where the workers' file URLs point (QUERN_PUBLIC_URL)


def owner_id(client: TestClient, headers: dict[str, str]) -> str:
    result: str = client.get("/v1/account", headers=headers).json()["id"]
    return result


def finished_prediction(client: TestClient, headers: dict[str, str], output: Any = None) -> str:
    """A succeeded prediction of the user behind `headers`, written as a worker would."""
    with session_scope() as session:
        model = models.get(session, owner=SYSTEM_USER, name="tiny-stable-diffusion")
        assert model is not None and model.latest_version is not None
        prediction_id = predictions.create(
            session,
            owner_id=owner_id(client, headers),
            version_id=model.latest_version.id,
            input={"prompt": "x"},
        ).id
        predictions.update_status(
            session,
            id=prediction_id,
            from_statuses=(PredictionStatus.STARTING,),
            status=PredictionStatus.SUCCEEDED,
            output=output,
        )
    return prediction_id


def with_file(client: TestClient, headers: dict[str, str]) -> tuple[str, str]:
    """(prediction id, file id): a succeeded prediction whose output is one stored file."""
    prediction_id = finished_prediction(client, headers)
    file_id = new_id()
    with session_scope() as session:
        files.create(
            session,
            id=file_id,
            owner_id=owner_id(client, headers),
            prediction_id=prediction_id,
            content_type="image/png",
            data=PNG,
        )
        set_output(session, prediction_id, [f"{PUBLIC_URL}/v1/files/{file_id}"])
    return prediction_id, file_id


def set_output(session: Session, prediction_id: str, output: Any) -> None:
    session.execute(update(Prediction).where(Prediction.id == prediction_id).values(output=output))


def read(client: TestClient, headers: dict[str, str], prediction_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/predictions/{prediction_id}", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def path_and_query(url: str) -> tuple[str, dict[str, str]]:
    """The URL as TestClient takes it (path and query), and its query parameters."""
    parts = urlsplit(url)
    params = {key: values[0] for key, values in parse_qs(parts.query).items()}
    return f"{parts.path}?{parts.query}" if parts.query else parts.path, params


def with_params(path: str, **params: str) -> str:
    return path + "?" + "&".join(f"{key}={value}" for key, value in params.items())


def assert_the_file(response: Any) -> None:
    assert response.status_code == 200, response.text
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


def assert_the_stream(response: Any, text: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert f"event: output\r\ndata: {text}" in response.text
    assert 'event: done\r\ndata: {"status": "succeeded"}' in response.text


# --- urls.stream --------------------------------------------------------------------------


@pytest.fixture
def streamed(client: TestClient, auth: dict[str, str]) -> tuple[str, str]:
    """(the prediction's id, its urls.stream as the API gives it)"""
    prediction_id = finished_prediction(client, auth, "Blue.")
    return prediction_id, read(client, auth, prediction_id)["urls"]["stream"]


def test_urls_stream_is_signed_and_opens_without_a_token(
    client: TestClient, streamed: tuple[str, str]
) -> None:
    prediction_id, url = streamed
    path, params = path_and_query(url)
    assert url.startswith(f"http://testserver/v1/predictions/{prediction_id}/stream?")
    assert sorted(params) == ["expires", "signature"]
    assert int(params["expires"]) > time.time() + 24 * 3600 - 1  # QUERN_SIGNED_URL_STREAM_TTL_S
    assert_the_stream(client.get(path), "Blue.")


def test_a_tampered_expired_or_other_predictions_stream_signature_is_403(
    client: TestClient, auth: dict[str, str], streamed: tuple[str, str]
) -> None:
    prediction_id, url = streamed
    _, params = path_and_query(url)
    plain = f"/v1/predictions/{prediction_id}/stream"
    expires, signature = params["expires"], params["signature"]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    other_id = finished_prediction(client, register_and_login(client), "Red.")
    _, other = path_and_query(read(client, register_admin(client), other_id)["urls"]["stream"])
    old = path_and_query(
        get_url_signer().stream_url(plain, prediction_id, time.time() - 3 * 24 * 3600)
    )[1]
    refused = [
        with_params(plain, expires=expires, signature=flipped),
        with_params(plain, expires=str(int(expires) + 3600), signature=signature),
        with_params(plain, expires=old["expires"], signature=old["signature"]),  # expired
        with_params(plain, **other),  # another prediction's signature
        with_params(f"/v1/predictions/{other_id}/stream", **params),  # this one's, elsewhere
        with_params(plain, signature=signature),
        with_params(plain, expires=expires),
        with_params(plain, expires="", signature=""),
        with_params(plain, expires="soon", signature=signature),
    ]
    for attempt in refused:
        response = client.get(attempt)
        body = assert_problem(response, 403, "signed URL")
        assert "Blue." not in response.text and "Red." not in response.text, attempt
        assert prediction_id not in body["detail"]


def test_the_plain_stream_url_still_needs_a_token_and_a_token_still_opens_it(
    client: TestClient, auth: dict[str, str], streamed: tuple[str, str]
) -> None:
    prediction_id, url = streamed
    path, _ = path_and_query(url)
    plain = f"/v1/predictions/{prediction_id}/stream"
    assert_problem(client.get(plain), 401)
    assert_the_stream(client.get(plain, headers=auth), "Blue.")
    assert_the_stream(client.get(path, headers=auth), "Blue.")  # the signed one, with a token
    # With a token the token decides, as on every route: a stranger's is 404, a bad one 401.
    assert_problem(client.get(path, headers=register_and_login(client)), 404)
    assert_problem(client.get(path, headers={"Authorization": "Bearer nope"}), 401)


def test_a_signed_stream_of_a_prediction_that_is_gone_is_404(client: TestClient) -> None:
    gone = new_id()
    signed = get_url_signer().stream_url(f"/v1/predictions/{gone}/stream", gone, time.time())
    assert_problem(client.get(signed), 404)


# --- file outputs -------------------------------------------------------------------------


def test_file_urls_in_outputs_are_signed_and_open_without_a_token(
    client: TestClient, auth: dict[str, str]
) -> None:
    prediction_id, file_id = with_file(client, auth)
    [url] = read(client, auth, prediction_id)["output"]
    path, params = path_and_query(url)
    assert url.startswith(f"{PUBLIC_URL}/v1/files/{file_id}?")
    assert sorted(params) == ["expires", "signature"]
    assert int(params["expires"]) > time.time() + 24 * 3600 - 1  # QUERN_SIGNED_URL_FILE_TTL_S
    response = client.get(path)
    assert_the_file(response)
    assert response.headers["cache-control"] == "private, max-age=86400"
    assert_the_file(client.get(path, headers=auth))  # and with its owner's token
    with session_scope() as session:  # stored as the worker wrote it: never signed
        stored = predictions.get(session, id=prediction_id)
        assert stored is not None
        assert stored.prediction.output == [f"{PUBLIC_URL}/v1/files/{file_id}"]


def test_the_plain_file_url_still_needs_a_token_and_a_token_still_opens_it(
    client: TestClient, auth: dict[str, str]
) -> None:
    _, file_id = with_file(client, auth)
    response = client.get(f"/v1/files/{file_id}")
    assert_problem(response, 401)
    assert PNG not in response.content
    assert_the_file(client.get(f"/v1/files/{file_id}", headers=auth))


def test_a_tampered_expired_or_other_files_signature_is_403(
    client: TestClient, auth: dict[str, str]
) -> None:
    prediction_id, file_id = with_file(client, auth)
    other_prediction, other_file = with_file(client, register_and_login(client))
    [url] = read(client, auth, prediction_id)["output"]
    [other_url] = read(client, register_admin(client), other_prediction)["output"]
    _, params = path_and_query(url)
    _, others = path_and_query(other_url)
    plain = f"/v1/files/{file_id}"
    expires, signature = params["expires"], params["signature"]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    stored = f"{PUBLIC_URL}/v1/files/{file_id}"
    old = path_and_query(
        get_url_signer().sign_files(stored, prediction_id, time.time() - 3 * 24 * 3600)
    )[1]
    refused = [
        with_params(plain, expires=expires, signature=flipped),
        with_params(plain, expires=str(int(expires) + 3600), signature=signature),
        with_params(plain, **old),  # expired
        with_params(plain, **others),  # another file's signature
        with_params(f"/v1/files/{other_file}", **params),  # this one's, on another file
        with_params(f"/v1/files/{new_id()}", **params),  # on a file that does not exist
        with_params("/v1/files/not-an-id", **params),
        with_params(plain, expires=expires),
    ]
    for attempt in refused:
        response = client.get(attempt)
        assert_problem(response, 403, "signed URL")
        assert PNG not in response.content, attempt


def test_a_model_that_outputs_someone_elses_file_url_gets_no_access_to_it(
    client: TestClient, auth: dict[str, str]
) -> None:
    """Outputs are the model's: a prediction whose output names another user's file (a text
    model told to repeat the URL) is signed for its own prediction, which the file is not."""
    _, file_id = with_file(client, auth)
    attacker = register_and_login(client)
    stolen = f"{PUBLIC_URL}/v1/files/{file_id}"
    theirs = finished_prediction(client, attacker, stolen)
    url = read(client, attacker, theirs)["output"]
    assert url.startswith(stolen + "?")  # signed, as any file URL in an output
    path, _ = path_and_query(url)
    response = client.get(path)
    assert_problem(response, 403)
    assert PNG not in response.content
    assert_problem(client.get(path, headers=attacker), 404)  # and their token: not theirs


def test_webhook_bodies_carry_urls_that_open_without_a_token(
    client: TestClient, auth: dict[str, str]
) -> None:
    """The workers build webhook bodies with the same serializer and the same setting."""
    prediction_id, _ = with_file(client, auth)
    with session_scope() as session:
        row = predictions.get(session, id=prediction_id)
        assert row is not None
        body = prediction_object(row.prediction, row.model, "http://testserver")
    [url] = body["output"]
    assert_the_file(client.get(path_and_query(url)[0]))
    stream = client.get(path_and_query(body["urls"]["stream"])[0])
    assert stream.status_code == 200 and "event: done" in stream.text
