"""Each API process caches callers and versions; a change made through one process (or by an
operator's command) is heard by every other from its next request (NOTIFY at commit)."""

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from db.session import session_scope
from db.tables import ApiToken
from tests.api.test_versions import VERSION, new_model
from tests.support.helpers import assert_problem, new_username, register_admin, register_and_login
from tests.support.processes import free_port, http_ok, start, stop, wait_until

pytestmark = pytest.mark.slow  # starts a second API process


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A second API process on the same database (the environment conftest set)."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("other-api")) / "api.log"
    process = start(["-m", "uvicorn", "api.main:app", "--port", str(port)], dict(os.environ), log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 60, "the second API process")
        with httpx.Client(base_url=base) as client:
            yield client
    finally:
        stop(process)


def _token(client: TestClient, auth: dict[str, str]) -> tuple[str, dict[str, str]]:
    created = client.post("/v1/tokens", json={"name": "t"}, headers=auth).json()
    return created["id"], {"Authorization": f"Bearer {created['token']}"}


def test_a_token_revoked_through_one_process_is_refused_by_another_at_once(
    client: TestClient, auth: dict[str, str], other: httpx.Client
) -> None:
    canary_id, canary = _token(client, auth)
    token_id, headers = _token(client, auth)
    wait_until(lambda: other.get("/v1/account", headers=canary).status_code == 200, 10, "it")
    assert other.get("/v1/account", headers=headers).status_code == 200
    with session_scope() as session:  # revoked behind the API's back: nothing announced
        session.execute(
            update(ApiToken).where(ApiToken.id == canary_id).values(revoked_at=ApiToken.created_at)
        )
    # So the other process answers from its cache: it has not seen this revocation.
    assert other.get("/v1/account", headers=canary).status_code == 200

    assert client.delete(f"/v1/tokens/{token_id}", headers=auth).status_code == 204
    assert_problem(other.get("/v1/account", headers=headers), 401)
    assert_problem(client.get("/v1/account", headers=headers), 401)
    # The announcement dropped every cached caller, the canary too.
    assert_problem(other.get("/v1/account", headers=canary), 401)


def test_a_role_changed_by_the_operator_counts_from_the_next_request(
    client: TestClient, other: httpx.Client
) -> None:
    from api.admin import main

    username = new_username()
    headers = register_and_login(client, username)
    body = {"name": new_username()}
    assert_problem(other.post("/v1/models", json=body, headers=headers), 403)
    assert main(["promote", username]) == 0
    assert other.post("/v1/models", json=body, headers=headers).status_code == 201
    assert main(["demote", username]) == 0
    assert_problem(other.post("/v1/models", json={"name": new_username()}, headers=headers), 403)


def test_a_new_version_is_run_by_every_process_from_the_next_create(
    client: TestClient, auth: dict[str, str], other: httpx.Client
) -> None:
    admin = register_admin(client)
    model = new_model(client, admin)
    body = {"model": model, "input": {"text": "x"}}
    first = other.post("/v1/predictions", json=body, headers=auth).json()["version"]
    assert other.post("/v1/predictions", json=body, headers=auth).json()["version"] == first
    added = client.post(f"/v1/models/{model}/versions", json=VERSION, headers=admin).json()
    assert other.post("/v1/predictions", json=body, headers=auth).json()["version"] == added["id"]


def test_a_deleted_version_is_forgotten_by_every_process_from_the_next_create(
    client: TestClient, auth: dict[str, str], other: httpx.Client
) -> None:
    admin = register_admin(client)
    model = new_model(client, admin)
    first = client.get(f"/v1/models/{model}", headers=auth).json()["latest_version"]["id"]
    added = client.post(f"/v1/models/{model}/versions", json=VERSION, headers=admin).json()["id"]
    # The other process caches `model` -> `added`, and `added` by id (the input is checked
    # after the version is resolved, so nothing is created).
    for body in ({"model": model}, {"version": added}):
        refused = other.post("/v1/predictions", json=body | {"input": {}}, headers=auth)
        assert_problem(refused, 422, "input.text")
    assert client.delete(f"/v1/models/{model}/versions/{added}", headers=admin).status_code == 204
    body = {"model": model, "input": {"text": "x"}}
    assert other.post("/v1/predictions", json=body, headers=auth).json()["version"] == first
    gone = {"version": added, "input": {"text": "x"}}
    assert_problem(other.post("/v1/predictions", json=gone, headers=auth), 422, "version")
