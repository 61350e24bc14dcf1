"""API tokens: shown once, stored hashed, accepted as bearer, revocable, expiring, private."""

import logging
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.settings import get_api_settings
from db.session import session_scope
from db.tables import ApiToken
from tests.support.helpers import assert_problem, register_and_login


def _create_token(client: TestClient, auth: dict[str, str], **body: object) -> dict[str, object]:
    response = client.post("/v1/tokens", json={"name": "ci", **body}, headers=auth)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def _bearer(token: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_is_shown_once_stored_hashed_and_works_as_bearer(client: TestClient, auth) -> None:
    created = _create_token(client, auth)
    secret = str(created["token"])
    assert secret.startswith("qrn_") and len(secret) > 40
    assert created["prefix"] == secret[:8]

    with session_scope() as session:
        row = session.get(ApiToken, str(created["id"]))
        assert row is not None and secret not in (row.token_hash, row.prefix)

    account = client.get("/v1/account", headers=_bearer(secret))
    assert account.status_code == 200
    assert account.json() == client.get("/v1/account", headers=auth).json()

    listed = client.get("/v1/tokens", headers=auth).json()["results"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0] and secret not in str(listed)
    assert listed[0]["last_used_at"] is not None


def test_a_revoked_token_is_401_at_once(client: TestClient, auth) -> None:
    created = _create_token(client, auth)
    assert client.get("/v1/account", headers=_bearer(created["token"])).status_code == 200
    assert client.delete(f"/v1/tokens/{created['id']}", headers=auth).status_code == 204

    response = client.get("/v1/predictions", headers=_bearer(created["token"]))
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/tokens", headers=auth).json()["results"] == []
    assert_problem(client.delete(f"/v1/tokens/{created['id']}", headers=auth), 404)


def test_an_expired_token_is_401(client: TestClient, auth) -> None:
    created = _create_token(
        client, auth, expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
    )
    with session_scope() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert_problem(client.get("/v1/account", headers=_bearer(created["token"])), 401)


def test_unknown_and_malformed_api_tokens_are_401(client: TestClient) -> None:
    for bearer in ("qrn_" + "A" * 43, "qrn_", "qrn_%00"):
        assert_problem(client.get("/v1/account", headers=_bearer(bearer)), 401)
    latin1 = {"Authorization": "Bearer qrn_\u00e9".encode("latin-1")}
    assert_problem(client.get("/v1/account", headers=latin1), 401)


def test_expiry_in_the_past_or_without_timezone_is_422(client: TestClient, auth) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = client.post("/v1/tokens", json={"name": "x", "expires_at": past}, headers=auth)
    assert_problem(response, 422, "expires_at")
    naive = "2099-01-01T00:00:00"
    response = client.post("/v1/tokens", json={"name": "x", "expires_at": naive}, headers=auth)
    assert_problem(response, 422, "expires_at")
    assert_problem(client.post("/v1/tokens", json={"name": ""}, headers=auth), 422, "name")


def test_another_users_token_cannot_be_seen_or_revoked(client: TestClient, auth) -> None:
    created = _create_token(client, auth)
    other = register_and_login(client)
    assert client.get("/v1/tokens", headers=other).json()["results"] == []
    assert_problem(client.delete(f"/v1/tokens/{created['id']}", headers=other), 404)
    assert client.get("/v1/account", headers=_bearer(created["token"])).status_code == 200


def test_tokens_per_user_are_limited(client: TestClient, auth, monkeypatch) -> None:
    monkeypatch.setattr(get_api_settings(), "max_tokens_per_user", 2)
    _create_token(client, auth)
    _create_token(client, auth)
    assert_problem(client.post("/v1/tokens", json={"name": "3rd"}, headers=auth), 409, "revoke")


def test_secrets_never_reach_the_logs_or_error_bodies(client: TestClient, caplog) -> None:
    password = "s3cret-pass-" + "x" * 8
    username = f"user-log{datetime.now(UTC).microsecond}"
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/auth/register", json={"username": username, "password": password})
        login = client.post("/v1/auth/token", data={"username": username, "password": password})
        jwt_headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        secret = str(_create_token(client, jwt_headers)["token"])
        bad = client.post("/v1/auth/token", data={"username": username, "password": password + "!"})
        tampered = client.get("/v1/account", headers=_bearer(secret[:-1] + "A"))
        client.post("/v1/predictions", json={"model": "x"}, headers=_bearer(secret))
    for text in (caplog.text, bad.text, tampered.text):
        assert password not in text and secret not in text
        assert login.json()["access_token"] not in text
