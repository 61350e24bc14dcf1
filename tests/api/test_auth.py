"""Registration, tokens, and what a bad token gets."""

import base64
import json
import time

import pytest
from fastapi.testclient import TestClient
from jose import jwt
from pydantic import ValidationError

from api.settings import ApiSettings, get_api_settings
from tests.support.helpers import assert_problem, new_username, register_and_login


def test_register_then_token_then_authenticated_call(client: TestClient) -> None:
    headers = register_and_login(client)
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_password_is_stored_as_argon2id_hash(client: TestClient) -> None:
    from db.repositories import users
    from db.session import session_scope

    username = new_username()
    client.post("/v1/auth/register", json={"username": username, "password": "correct horse"})
    with session_scope() as session:
        user = users.get_by_username(session, username=username)
        assert user is not None and user.password_hash is not None
        assert user.password_hash.startswith("$argon2id$")
        assert "correct horse" not in user.password_hash


def test_register_twice_is_409(client: TestClient) -> None:
    username = new_username()
    body = {"username": username, "password": "password-1"}
    assert client.post("/v1/auth/register", json=body).status_code == 201
    assert_problem(client.post("/v1/auth/register", json=body), 409, username)


def test_register_rejects_bad_username_and_short_password(client: TestClient) -> None:
    response = client.post("/v1/auth/register", json={"username": "Bad Name!", "password": "x"})
    assert_problem(response, 422, "username", "password")


def test_register_response_never_contains_the_password_or_hash(client: TestClient) -> None:
    response = client.post(
        "/v1/auth/register", json={"username": new_username(), "password": "sekrit-password"}
    )
    assert "sekrit" not in response.text and "argon2" not in response.text


def test_wrong_password_is_401(client: TestClient) -> None:
    username = new_username()
    client.post("/v1/auth/register", json={"username": username, "password": "password-1"})
    response = client.post("/v1/auth/token", data={"username": username, "password": "wrong-pw"})
    assert_problem(response, 401)
    unknown = client.post("/v1/auth/token", data={"username": "nobody-here", "password": "x"})
    assert_problem(unknown, 401)


def test_no_token_is_401_with_www_authenticate(client: TestClient) -> None:
    response = client.get("/v1/predictions")
    assert_problem(response, 401, "Authorization")
    assert response.headers["www-authenticate"] == "Bearer"


def _user_id(client: TestClient, headers: dict[str, str]) -> str:
    token = headers["Authorization"].removeprefix("Bearer ")
    return str(jwt.get_unverified_claims(token)["sub"])


def test_tampered_expired_foreign_and_unsigned_tokens_are_401(client: TestClient) -> None:
    settings = get_api_settings()
    headers = register_and_login(client)
    user_id = _user_id(client, headers)
    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + 600}
    claims |= {"iss": settings.jwt_issuer, "aud": settings.jwt_audience}

    expired = jwt.encode(claims | {"exp": now - 10}, settings.jwt_secret, algorithm="HS256")
    foreign = jwt.encode(claims, "another-key-" + "x" * 32, algorithm="HS256")
    wrong_audience = jwt.encode(claims | {"aud": "other"}, settings.jwt_secret, algorithm="HS256")
    # python-jose skips the audience and issuer checks when the claim is absent, unless required.
    no_audience = jwt.encode(
        {k: v for k, v in claims.items() if k != "aud"}, settings.jwt_secret, algorithm="HS256"
    )
    no_issuer = jwt.encode(
        {k: v for k, v in claims.items() if k != "iss"}, settings.jwt_secret, algorithm="HS256"
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode())
    unsigned = f"{header.decode().rstrip('=')}.{payload.decode().rstrip('=')}."
    valid = headers["Authorization"].removeprefix("Bearer ")
    head, _, signature = valid.split(".")
    tampered_claims = jwt.get_unverified_claims(valid) | {"sub": "someone-else"}
    tampered_body = base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).decode()
    tampered = f"{head}.{tampered_body.rstrip('=')}.{signature}"

    refused = (expired, foreign, wrong_audience, no_audience, no_issuer, unsigned, tampered)
    for token in (*refused, "garbage", ""):
        response = client.get("/v1/predictions", headers={"Authorization": f"Bearer {token}"})
        assert_problem(response, 401)
    assert client.get("/v1/predictions", headers=headers).status_code == 200


def test_default_secret_is_refused_outside_development(monkeypatch) -> None:
    import pytest
    from pydantic import ValidationError

    from api.settings import ApiSettings

    monkeypatch.delenv("QUERN_JWT_SECRET")
    with pytest.raises(ValidationError, match="QUERN_JWT_SECRET"):
        ApiSettings(env="production")
    assert ApiSettings(env="development").jwt_secret


def test_passwords_cost_the_owasp_minimum_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite hashes cheaply (tests/conftest.py); production may not."""
    for name in ("QUERN_PASSWORD_HASH_MEMORY_KIB", "QUERN_PASSWORD_HASH_TIME_COST"):
        monkeypatch.delenv(name)
    production = ApiSettings(env="production")
    assert (production.password_hash_memory_kib, production.password_hash_time_cost) == (
        19 * 1024,
        2,
    )
    for weak in ({"password_hash_memory_kib": 19 * 1024 - 1}, {"password_hash_time_cost": 1}):
        with pytest.raises(ValidationError, match="refused in production"):
            ApiSettings(env="production", **weak)
        assert ApiSettings(env="test", **weak) and ApiSettings(env="development", **weak)


def test_a_password_hashed_at_another_cost_still_verifies() -> None:
    """A hash carries its own cost: lowering or raising it never locks anyone out."""
    from pwdlib.hashers.argon2 import Argon2Hasher

    from api.security import verify_password

    stored = Argon2Hasher(memory_cost=19 * 1024, time_cost=2, parallelism=1).hash("pw-12345")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("pw-12345", stored) and not verify_password("pw-12346", stored)
