"""Ownership and roles: another user's object does not exist; admins manage models, see all."""

from fastapi.testclient import TestClient

from tests.support.helpers import assert_problem, new_username, register_admin, register_and_login

BODY = {"model": "quern/all-minilm-l6-v2", "input": {"text": "mine"}}


def test_account_says_who_and_what_role(client: TestClient) -> None:
    username = new_username()
    headers = register_and_login(client, username)
    account = client.get("/v1/account", headers=headers).json()
    assert account["username"] == username and account["role"] == "user"
    assert "password" not in str(account) and "hash" not in str(account)


def test_another_user_cannot_read_cancel_or_list_my_prediction(client: TestClient, auth) -> None:
    mine = client.post("/v1/predictions", json=BODY, headers=auth).json()
    other = register_and_login(client)

    assert_problem(client.get(f"/v1/predictions/{mine['id']}", headers=other), 404)
    assert_problem(client.post(f"/v1/predictions/{mine['id']}/cancel", headers=other), 404)
    assert client.get("/v1/predictions", headers=other).json()["results"] == []
    # The 404 is the same as for an id that never existed: nothing leaks.
    missing = client.get("/v1/predictions/" + "a" * 26, headers=other).json()
    theirs = client.get(f"/v1/predictions/{mine['id']}", headers=other).json()
    assert missing["title"] == theirs["title"] and missing["status"] == theirs["status"]

    assert client.get(f"/v1/predictions/{mine['id']}", headers=auth).json()["status"] == "starting"


def test_an_admin_sees_and_cancels_everyones_predictions(client: TestClient, auth) -> None:
    mine = client.post("/v1/predictions", json=BODY, headers=auth).json()
    admin = register_admin(client)
    assert client.get(f"/v1/predictions/{mine['id']}", headers=admin).status_code == 200
    listed = client.get("/v1/predictions?page_size=100", headers=admin).json()["results"]
    assert mine["id"] in [p["id"] for p in listed]
    canceled = client.post(f"/v1/predictions/{mine['id']}/cancel", headers=admin).json()
    assert canceled["status"] == "canceled"


def test_only_admins_create_models(client: TestClient, auth) -> None:
    name = new_username()
    response = client.post("/v1/models", json={"name": name}, headers=auth)
    assert_problem(response, 403)

    admin = register_admin(client)
    owner = client.get("/v1/account", headers=admin).json()["username"]
    created = client.post("/v1/models", json={"name": name, "description": "d"}, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json() == {
        "url": f"http://testserver/v1/models/{owner}/{name}",
        "owner": owner,
        "name": name,
        "description": "d",
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "cover_image_url": None,
        "run_count": 0,
        "default_example": None,
        "is_official": False,
        "latest_version": None,
    }
    assert_problem(client.post("/v1/models", json={"name": name}, headers=admin), 409, name)
    assert client.get(f"/v1/models/{owner}/{name}", headers=auth).json()["name"] == name
    assert_problem(client.get(f"/v1/models/{owner}/nope", headers=auth), 404)
    assert_problem(client.post("/v1/models", json={"name": "bad name"}, headers=admin), 422, "name")


def test_the_admin_command_reports_an_unknown_user() -> None:
    from api.admin import main

    assert main(["promote", new_username()]) == 1
