"""Changing and deleting models and versions (Replicate's `PATCH`/`DELETE`): their owner only
(any admin with QUERN_ADMINS_PUBLISH_ANY_MODEL), a model only without versions, a version only
without predictions, and every API process forgets what it cached of them."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_versions import VERSION
from tests.support.helpers import assert_problem, new_username, register_admin

LINKS = {
    "github_url": "https://github.com/example/model",
    "paper_url": "https://arxiv.org/abs/2504.17639",
    "license_url": "https://choosealicense.com/licenses/mit/",
    "cover_image_url": "https://example.com/cover.png",
}


@pytest.fixture(scope="module")
def owner(client: TestClient) -> dict[str, str]:
    return register_admin(client)


@pytest.fixture
def any_model() -> Iterator[None]:
    from api.settings import get_api_settings

    settings = get_api_settings()
    settings.admins_publish_any_model = True
    try:
        yield
    finally:
        settings.admins_publish_any_model = False


def new_model(client: TestClient, owner: dict[str, str], **body: Any) -> str:
    name = new_username()
    response = client.post("/v1/models", json={"name": name, **body}, headers=owner)
    assert response.status_code == 201, response.text
    return f"{response.json()['owner']}/{name}"


def add_version(client: TestClient, owner: dict[str, str], model: str) -> str:
    response = client.post(f"/v1/models/{model}/versions", json=VERSION, headers=owner)
    assert response.status_code == 201, response.text
    version_id: str = response.json()["id"]
    return version_id


def run(client: TestClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/predictions", json={"input": {"text": "x"}, **body}, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


# --- PATCH ---------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_given(
    client: TestClient, owner: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, owner, description="before", github_url=LINKS["github_url"])
    response = client.patch(f"/v1/models/{model}", json={"description": "after"}, headers=owner)
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["description"], changed["github_url"]) == ("after", LINKS["github_url"])
    assert changed["url"].endswith(f"/v1/models/{model}") and changed["visibility"] == "public"

    body = LINKS | {"visibility": "public"}
    changed = client.patch(f"/v1/models/{model}", json=body, headers=owner).json()
    assert {k: changed[k] for k in LINKS} == LINKS and changed["description"] == "after"
    assert client.get(f"/v1/models/{model}", headers=auth).json() == changed

    cleared = {"github_url": None, "description": None}
    changed = client.patch(f"/v1/models/{model}", json=cleared, headers=owner).json()
    assert (changed["github_url"], changed["description"]) == (None, "")
    assert changed["paper_url"] == LINKS["paper_url"]
    unchanged = client.patch(f"/v1/models/{model}", json={}, headers=owner)
    assert unchanged.status_code == 200 and unchanged.json() == changed


def test_patch_keeps_the_latest_version_and_run_count(
    client: TestClient, owner: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, owner)
    version_id = add_version(client, owner, model)
    run(client, auth, model=model)
    changed = client.patch(f"/v1/models/{model}", json={"description": "d"}, headers=owner).json()
    assert changed["latest_version"]["id"] == version_id and changed["run_count"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"visibility": "private"}, "visibility"),
        ({"visibility": None}, "visibility"),
        ({"github_url": "ftp://example.com/x"}, "github_url"),
        ({"cover_image_url": "https://" + "x" * 1024}, "cover_image_url"),
        ({"description": "nul \x00"}, "description"),
        ({"description": "x" * 2001}, "description"),
        ({"readme": "# Not kept"}, "readme"),
        ({"name": "renamed"}, "name"),
    ],
)
def test_bad_patches_are_422_naming_the_field(
    client: TestClient, owner: dict[str, str], body: dict[str, Any], field: str
) -> None:
    model = new_model(client, owner)
    assert_problem(client.patch(f"/v1/models/{model}", json=body, headers=owner), 422, field)


# --- Who may ---------------------------------------------------------------------------------


def test_only_the_owner_changes_or_deletes(
    client: TestClient, owner: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, owner, description="mine")
    version_id = add_version(client, owner, model)
    other_admin = register_admin(client)
    for headers in (auth, other_admin):  # a user, and an admin who does not own it
        patch = client.patch(f"/v1/models/{model}", json={"description": "x"}, headers=headers)
        assert_problem(patch, 403)
        assert_problem(client.delete(f"/v1/models/{model}/versions/{version_id}",
                                     headers=headers), 403)  # fmt: skip
        assert_problem(client.delete(f"/v1/models/{model}", headers=headers), 403)
    for builtin in ("/v1/models/quern/all-minilm-l6-v2", "/v1/models/quern/no-such-model"):
        assert_problem(client.delete(builtin, headers=auth), 403)  # not an admin at all
    assert_problem(client.delete("/v1/models/quern/all-minilm-l6-v2", headers=other_admin), 403)
    after = client.get(f"/v1/models/{model}", headers=auth).json()
    assert after["description"] == "mine" and after["latest_version"]["id"] == version_id


def test_any_admin_may_when_the_operator_allows_it(
    client: TestClient, owner: dict[str, str], any_model: None
) -> None:
    model = new_model(client, owner)
    version_id = add_version(client, owner, model)
    other_admin = register_admin(client)
    response = client.patch(f"/v1/models/{model}", json={"description": "x"}, headers=other_admin)
    assert response.status_code == 200, response.text
    delete = client.delete(f"/v1/models/{model}/versions/{version_id}", headers=other_admin)
    assert delete.status_code == 204, delete.text
    assert client.delete(f"/v1/models/{model}", headers=other_admin).status_code == 204


def test_unknown_models_and_versions_are_404(client: TestClient, owner: dict[str, str]) -> None:
    model = new_model(client, owner)
    add_version(client, owner, model)
    assert_problem(client.patch("/v1/models/nobody/nothing", json={}, headers=owner), 404)
    assert_problem(client.delete("/v1/models/nobody/nothing", headers=owner), 404)
    other = client.get("/v1/models/quern/all-minilm-l6-v2", headers=owner).json()
    foreign = other["latest_version"]["id"]  # exists, but is another model's
    for version_id in (foreign, "a" * 26, "not-an-id"):
        response = client.delete(f"/v1/models/{model}/versions/{version_id}", headers=owner)
        assert_problem(response, 404)
    assert client.get("/v1/models/quern/all-minilm-l6-v2", headers=owner).json() == other


# --- DELETE ----------------------------------------------------------------------------------


def test_a_model_with_versions_is_409_and_deleted_once_it_has_none(
    client: TestClient, owner: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, owner)
    first, second = add_version(client, owner, model), add_version(client, owner, model)
    body = assert_problem(client.delete(f"/v1/models/{model}", headers=owner), 409)
    assert "2 versions" in body["detail"] and "delete them first" in body["detail"]

    # Deleting the latest makes the one before it the latest.
    assert client.delete(f"/v1/models/{model}/versions/{second}", headers=owner).status_code == 204
    assert client.get(f"/v1/models/{model}", headers=auth).json()["latest_version"]["id"] == first
    assert_problem(client.get(f"/v1/models/{model}/versions/{second}", headers=auth), 404)
    assert_problem(client.delete(f"/v1/models/{model}/versions/{second}", headers=owner), 404)
    assert (
        "1 version:"
        in assert_problem(client.delete(f"/v1/models/{model}", headers=owner), 409)["detail"]
    )

    assert client.delete(f"/v1/models/{model}/versions/{first}", headers=owner).status_code == 204
    assert client.get(f"/v1/models/{model}", headers=auth).json()["latest_version"] is None
    response = client.delete(f"/v1/models/{model}", headers=owner)
    assert response.status_code == 204 and response.content == b""
    assert_problem(client.get(f"/v1/models/{model}", headers=auth), 404)
    listed = client.get("/v1/models", headers=auth).json()["results"]
    assert model not in {f"{m['owner']}/{m['name']}" for m in listed}
    # The name is free again.
    owner_name, name = model.split("/")
    again = client.post("/v1/models", json={"name": name}, headers=owner)
    assert again.status_code == 201 and again.json()["owner"] == owner_name


def test_a_version_with_predictions_is_409(
    client: TestClient, owner: dict[str, str], auth: dict[str, str]
) -> None:
    model = new_model(client, owner)
    version_id = add_version(client, owner, model)
    prediction = run(client, auth, version=version_id)
    client.post(f"/v1/predictions/{prediction['id']}/cancel", headers=auth)  # finished: still
    response = client.delete(f"/v1/models/{model}/versions/{version_id}", headers=owner)
    assert "has predictions" in assert_problem(response, 409)["detail"]
    assert client.get(f"/v1/predictions/{prediction['id']}", headers=auth).status_code == 200
    assert_problem(client.delete(f"/v1/models/{model}", headers=owner), 409)


def test_what_a_create_cached_is_forgotten_when_its_version_goes(
    client: TestClient, owner: dict[str, str], auth: dict[str, str]
) -> None:
    """Creates read versions from the process's cache, which the delete empties before it
    answers (and announces to the other processes: test_caches_across_processes.py)."""
    model = new_model(client, owner)
    first = add_version(client, owner, model)
    latest = add_version(client, owner, model)
    # Refused creates still cache the version they resolved (input is checked after).
    for body in ({"model": model}, {"version": latest}):
        refused = client.post("/v1/predictions", json=body | {"input": {}}, headers=auth)
        assert_problem(refused, 422, "input.text")
    assert client.delete(f"/v1/models/{model}/versions/{latest}", headers=owner).status_code == 204
    assert run(client, auth, model=model)["version"] == first
    gone = client.post("/v1/predictions", json={"version": latest, "input": {"text": "x"}},
                       headers=auth)  # fmt: skip
    assert_problem(gone, 422, "version")


def test_the_document_lists_the_new_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    model = paths["/v1/models/{owner}/{name}"]
    assert {"get", "patch", "delete"} <= model.keys()
    assert "204" in model["delete"]["responses"] and "409" in model["delete"]["responses"]
    version = paths["/v1/models/{owner}/{name}/versions/{version_id}"]
    assert {"get", "delete"} <= version.keys() and "204" in version["delete"]["responses"]
    body = model["patch"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/ModelUpdate")
