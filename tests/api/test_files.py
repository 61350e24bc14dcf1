"""GET /v1/files/{id}: a prediction's file, to its owner or an admin; to anyone else it does
not exist."""

import hashlib
import secrets
from typing import Any

import pytest
from fastapi.testclient import TestClient

from db.ids import new_id
from db.repositories import files, models, predictions
from db.seed import SYSTEM_USER
from db.session import session_scope
from tests.support.helpers import assert_problem, register_admin, register_and_login

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64)


def stored_file(client: TestClient, headers: dict[str, str], data: bytes = PNG) -> str:
    """A file of a prediction of the user behind `headers`, written as a worker would."""
    owner_id = client.get("/v1/account", headers=headers).json()["id"]
    with session_scope() as session:
        model = models.get(session, owner=SYSTEM_USER, name="tiny-stable-diffusion")
        assert model is not None and model.latest_version is not None
        prediction = predictions.create(
            session, owner_id=owner_id, version_id=model.latest_version.id, input={"prompt": "x"}
        )
        return files.create(
            session,
            owner_id=owner_id,
            prediction_id=prediction.id,
            content_type="image/png",
            data=data,
        ).id


@pytest.fixture
def file_id(client: TestClient, auth: dict[str, str]) -> str:
    return stored_file(client, auth)


def assert_the_file(response: Any, file_id: str) -> None:
    assert response.status_code == 200, response.text
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-length"] == str(len(PNG))
    assert response.headers["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'
    assert response.headers["cache-control"] == "private, max-age=86400"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-disposition"] == (
        f"inline; filename=\"{file_id}.png\"; filename*=UTF-8''{file_id}.png"
    )


def test_the_owner_gets_the_exact_bytes_with_their_type_and_cache_headers(
    client: TestClient, auth: dict[str, str], file_id: str
) -> None:
    assert_the_file(client.get(f"/v1/files/{file_id}", headers=auth), file_id)


def test_an_admin_gets_anyones_file(client: TestClient, file_id: str) -> None:
    assert_the_file(client.get(f"/v1/files/{file_id}", headers=register_admin(client)), file_id)


def test_another_users_file_is_the_same_404_as_one_that_does_not_exist(
    client: TestClient, file_id: str
) -> None:
    stranger = register_and_login(client)
    theirs = assert_problem(client.get(f"/v1/files/{file_id}", headers=stranger), 404)
    missing = new_id()
    nothing = assert_problem(client.get(f"/v1/files/{missing}", headers=stranger), 404)
    assert theirs["title"] == nothing["title"] and file_id not in str(nothing)
    assert theirs["detail"].replace(file_id, missing) == nothing["detail"]


@pytest.mark.parametrize("malformed", ["x", "A" * 26, "a" * 300, "%00", "..%2F..%2Fetc"])
def test_a_malformed_id_is_404(client: TestClient, auth: dict[str, str], malformed: str) -> None:
    assert_problem(client.get(f"/v1/files/{malformed}", headers=auth), 404)


def test_without_a_token_it_is_401(client: TestClient, file_id: str) -> None:
    response = client.get(f"/v1/files/{file_id}")
    assert_problem(response, 401)
    assert PNG not in response.content
