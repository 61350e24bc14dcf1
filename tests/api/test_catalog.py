"""Replicate's `GET /v1/hardware` and `GET /v1/collections[/{slug}]`, in Replicate's shapes."""

import pytest
from fastapi.testclient import TestClient

from tests.api.test_versions import VERSION
from tests.support.helpers import assert_problem, new_username, register_admin

EMBED = "quern/all-minilm-l6-v2"
LLM = "quern/smollm2-135m-instruct"
SLUGS = [
    "official", "text-generation", "embeddings", "text-to-image", "text-classification",
    "image-classification", "image-to-text", "custom",
]  # fmt: skip


def refs(collection: dict[str, object]) -> list[str]:
    models = collection["models"]
    assert isinstance(models, list)
    return [f"{m['owner']}/{m['name']}" for m in models]


def test_hardware_is_cpu_and_gpu(client: TestClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/hardware", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json() == [{"name": "CPU", "sku": "cpu"}, {"name": "GPU", "sku": "gpu"}]


def test_collections_are_listed_without_their_models(
    client: TestClient, auth: dict[str, str]
) -> None:
    page = client.get("/v1/collections", headers=auth).json()
    assert page["next"] is None and page["previous"] is None
    assert [c["slug"] for c in page["results"]] == SLUGS
    for collection in page["results"]:
        assert set(collection) == {"name", "slug", "description"}
        assert collection["name"] and collection["description"]


def test_a_collection_has_its_models_as_the_models_api_shows_them(
    client: TestClient, auth: dict[str, str]
) -> None:
    official = client.get("/v1/collections/official", headers=auth).json()
    assert set(official) == {"name", "slug", "description", "models"}
    assert official["slug"] == "official" and {EMBED, LLM} <= set(refs(official))
    assert all(model["is_official"] for model in official["models"])
    embed = next(m for m in official["models"] if f"{m['owner']}/{m['name']}" == EMBED)
    assert embed == client.get(f"/v1/models/{EMBED}", headers=auth).json()

    embeddings = client.get("/v1/collections/embeddings", headers=auth).json()
    assert EMBED in refs(embeddings) and LLM not in refs(embeddings)
    assert {m["latest_version"]["model_type"] for m in embeddings["models"]} == {"embeddings"}
    assert LLM in refs(client.get("/v1/collections/text-generation", headers=auth).json())


def test_a_model_is_in_the_collection_of_its_latest_versions_type(
    client: TestClient, auth: dict[str, str]
) -> None:
    admin = register_admin(client)
    name = new_username()
    assert client.post("/v1/models", json={"name": name}, headers=admin).status_code == 201
    model = f"{client.get('/v1/account', headers=admin).json()['username']}/{name}"
    for slug in SLUGS:  # no version yet: no type
        assert model not in refs(client.get(f"/v1/collections/{slug}", headers=auth).json())
    custom = VERSION | {
        "model_type": "custom",
        "predictor": "tests.support.custom_predictors:Reverse",
    }
    response = client.post(f"/v1/models/{model}/versions", json=custom, headers=admin)
    assert response.status_code == 201, response.text
    assert model in refs(client.get("/v1/collections/custom", headers=auth).json())
    assert model not in refs(client.get("/v1/collections/official", headers=auth).json())
    client.post(f"/v1/models/{model}/versions", json=VERSION, headers=admin)
    assert model not in refs(client.get("/v1/collections/custom", headers=auth).json())
    assert model in refs(client.get("/v1/collections/embeddings", headers=auth).json())


@pytest.mark.parametrize("slug", ["all", "Official", "no-such-collection", "x" * 300])
def test_an_unknown_collection_is_404(client: TestClient, auth: dict[str, str], slug: str) -> None:
    assert_problem(client.get(f"/v1/collections/{slug}", headers=auth), 404, slug[:20])


@pytest.mark.parametrize("path", ["/v1/hardware", "/v1/collections", "/v1/collections/official"])
def test_they_need_a_token(client: TestClient, path: str) -> None:
    assert_problem(client.get(path), 401)
