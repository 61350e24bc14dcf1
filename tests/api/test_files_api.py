"""The Files API (Replicate's): upload, read, list, delete; types checked against the bytes."""

import base64
import hashlib
import io
import json
import os

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from api.settings import get_api_settings
from db.session import session_scope
from tests.support.helpers import assert_problem, create_version, register_and_login


def png(side: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def upload(
    client: TestClient,
    auth: dict[str, str],
    data: bytes,
    content_type: str = "image/png",
    **form: str,
):
    files = {"content": ("red.png", data, content_type)}
    return client.post("/v1/files", files=files, data=form, headers=auth)


def test_an_upload_is_stored_whole_and_read_back_as_its_object_and_its_bytes(
    client: TestClient, auth: dict[str, str]
) -> None:
    data = png()
    response = upload(client, auth, data, metadata=json.dumps({"purpose": "test"}))
    assert response.status_code == 201, response.text
    file = response.json()
    assert (file["name"], file["content_type"], file["size"]) == ("red.png", "image/png", len(data))
    assert file["checksums"] == {"sha256": hashlib.sha256(data).hexdigest()}
    assert file["metadata"] == {"purpose": "test"} and file["expires_at"] > file["created_at"]
    assert file["urls"]["get"].endswith(f"/v1/files/{file['id']}")

    assert client.get(f"/v1/files/{file['id']}", headers=auth).json() == file
    download = client.get(f"/v1/files/{file['id']}/download", headers=auth)
    assert download.content == data and download.headers["content-type"] == "image/png"
    listed = client.get("/v1/files", headers=auth).json()
    assert [f["id"] for f in listed["results"]] == [file["id"]]


def test_a_file_of_several_chunks_comes_back_byte_for_byte(
    client: TestClient, auth: dict[str, str]
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 12345)
    file = upload(client, auth, data, "application/octet-stream", filename="blob.bin").json()
    assert file["size"] == len(data) and file["name"] == "blob.bin"
    download = client.get(f"/v1/files/{file['id']}/download", headers=auth)
    assert hashlib.sha256(download.content).hexdigest() == file["checksums"]["sha256"]


def test_another_users_file_does_not_exist_for_them(
    client: TestClient, auth: dict[str, str]
) -> None:
    file = upload(client, auth, png()).json()
    other = register_and_login(client)
    for method, path in (
        ("GET", ""), ("GET", "/download"), ("DELETE", ""),
    ):  # fmt: skip
        response = client.request(method, f"/v1/files/{file['id']}{path}", headers=other)
        assert response.status_code == 404, (method, path)
    assert client.get("/v1/files", headers=other).json()["results"] == []


@pytest.mark.parametrize(
    ("data", "content_type", "reason"),
    [
        (png(), "image/jpeg", "The bytes are image/png, not image/jpeg"),
        (b"just some text", "image/png", "The bytes are not image/png"),
    ],
)
def test_a_type_the_bytes_contradict_is_422_naming_it(
    client: TestClient, auth: dict[str, str], data: bytes, content_type: str, reason: str
) -> None:
    body = assert_problem(upload(client, auth, data, content_type), 422, "type")
    assert reason in body["detail"]


def test_the_type_is_taken_from_the_bytes_when_none_is_said(
    client: TestClient, auth: dict[str, str]
) -> None:
    file = upload(client, auth, png(), "application/octet-stream").json()
    assert file["content_type"] == "image/png"
    text_file = upload(client, auth, b"hello", "text/plain").json()
    assert text_file["content_type"] == "text/plain"


def test_bad_metadata_and_oversized_files_are_refused_and_nothing_is_kept(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_problem(upload(client, auth, png(), metadata="[1, 2]"), 422, "metadata")
    monkeypatch.setattr(get_api_settings(), "max_file_bytes", 1000)
    assert_problem(upload(client, auth, os.urandom(1001), "application/octet-stream"), 413)
    assert client.get("/v1/files", headers=auth).json()["results"] == []


def test_an_expired_file_is_gone_and_a_deleted_one_too(
    client: TestClient, auth: dict[str, str]
) -> None:
    expired, deleted = (upload(client, auth, png()).json() for _ in range(2))
    with session_scope() as session:
        session.execute(
            text("UPDATE files SET expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": expired["id"]},
        )
    assert client.get(f"/v1/files/{expired['id']}", headers=auth).status_code == 404
    assert client.delete(f"/v1/files/{deleted['id']}", headers=auth).status_code == 204
    assert client.get(f"/v1/files/{deleted['id']}/download", headers=auth).status_code == 404
    assert client.get("/v1/files", headers=auth).json()["results"] == []


def test_files_list_in_pages(client: TestClient, auth: dict[str, str]) -> None:
    ids = [upload(client, auth, png(side)).json()["id"] for side in (4, 5, 6)]
    first = client.get("/v1/files?page_size=2", headers=auth).json()
    assert [f["id"] for f in first["results"]] == ids[:0:-1]
    second = client.get(first["next"], headers=auth).json()
    assert [f["id"] for f in second["results"]] == ids[:1] and second["next"] is None
    assert_problem(client.get("/v1/files?cursor=bogus", headers=auth), 422, "cursor")


# --- files as inputs -------------------------------------------------------------------------

FILE_SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "format": "uri"},
        "more": {"type": "array", "items": {"type": "string", "format": "uri"}},
    },
    "required": ["image"],
    "additionalProperties": False,
}


@pytest.fixture
def file_version() -> str:
    return create_version(max_batch_size=4, max_batch_wait_ms=5, input_schema=FILE_SCHEMA)


def predict(client: TestClient, auth: dict[str, str], version: str, **input: object):
    return client.post("/v1/predictions", json={"version": version, "input": input}, headers=auth)


def test_an_uploads_url_a_data_url_and_a_public_url_are_file_inputs(
    client: TestClient, auth: dict[str, str], file_version: str
) -> None:
    file = upload(client, auth, png()).json()
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    response = predict(
        client, auth, file_version, image=file["urls"]["get"],
        more=[data_url, "https://93.184.215.14/cat.png"],
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["input"]["image"] == file["urls"]["get"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not a url", "A file is a Quern file URL"),
        ("ftp://example.com/cat.png", "A file is a Quern file URL"),
        ("http://127.0.0.1:8000/cat.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("data:image/png;base64,@@@", "base64 is invalid"),
        ("http://testserver/v1/files/aaaaaaaaaaaaaaaaaaaaaaaaaa", "No file"),
    ],
)
def test_a_file_input_that_cannot_be_used_is_422_naming_it(
    client: TestClient, auth: dict[str, str], file_version: str, value: str, reason: str
) -> None:
    body = assert_problem(predict(client, auth, file_version, image=value), 422, "input.image")
    assert reason in body["detail"]


def test_another_users_or_an_expired_file_is_refused_as_an_input(
    client: TestClient, auth: dict[str, str], file_version: str
) -> None:
    other = register_and_login(client)
    theirs = upload(client, other, png()).json()
    body = assert_problem(
        predict(client, auth, file_version, image=theirs["urls"]["get"]), 422, "input.image"
    )
    assert "No file" in body["detail"]
    mine = upload(client, auth, png()).json()
    with session_scope() as session:
        session.execute(
            text("UPDATE files SET expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": mine["id"]},
        )
    body = assert_problem(
        predict(client, auth, file_version, image="x", more=[mine["urls"]["get"]]),
        422, "input.more[0]", "input.image",
    )  # fmt: skip
    assert "has expired" in body["detail"]


def test_a_data_url_past_its_limit_is_refused_but_not_by_the_string_limit(
    client: TestClient, auth: dict[str, str], file_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_api_settings()
    monkeypatch.setattr(settings, "max_input_string_chars", 100)
    data_url = "data:application/octet-stream;base64," + base64.b64encode(b"x" * 600).decode()
    assert predict(client, auth, file_version, image=data_url).status_code == 201
    monkeypatch.setattr(settings, "max_data_url_bytes", 500)
    body = assert_problem(predict(client, auth, file_version, image=data_url), 422, "input.image")
    assert "at most 500 bytes" in body["detail"]
