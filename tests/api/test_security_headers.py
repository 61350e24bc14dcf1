"""Answers carry the headers that keep browsers and shared caches from misusing them, and an
input nested deeper than can be served back is refused before it is stored."""

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.session import session_scope
from db.storable import MAX_DEPTH
from db.tables import Prediction
from tests.support.helpers import assert_problem


def test_every_answer_says_nosniff_no_referrer_no_framing(client: TestClient) -> None:
    for response in (client.get("/health"), client.get("/v1/account")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"


def test_answers_with_secrets_are_never_stored_by_a_cache(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = client.post("/v1/tokens", headers=auth, json={"name": "ci"})
    secret = client.get("/v1/webhooks/default/secret", headers=auth)
    for response in (created, secret):
        assert response.status_code in (200, 201), response.text
        assert response.headers["cache-control"] == "no-store"


def test_an_input_nested_too_deep_is_422_naming_it_and_nothing_is_stored(
    client: TestClient, auth: dict[str, str]
) -> None:
    """A version whose schema allows free-form values: the depth is bounded anyway."""
    admin_version = _free_form_version()
    nested: object = "leaf"
    for _ in range(300):
        nested = {"a": nested}
    with session_scope() as session:
        before = session.execute(select(func.count()).select_from(Prediction)).scalar_one()
    response = client.post(
        "/v1/predictions", headers=auth, json={"version": admin_version, "input": {"x": nested}}
    )
    body = assert_problem(response, 422)
    assert any(f"deeper than {MAX_DEPTH}" in item["message"] for item in body["invalid_fields"])
    assert body["invalid_fields"][0]["field"].startswith("input.x.a")
    with session_scope() as session:
        after = session.execute(select(func.count()).select_from(Prediction)).scalar_one()
    assert after == before


def _free_form_version() -> str:
    from db.repositories import models
    from tests.support.helpers import create_version

    version_id = create_version(max_batch_size=1, max_batch_wait_ms=0)
    with session_scope() as session:
        version = models.get_version(session, id=version_id)
        assert version is not None
        version[0].input_schema = {"type": "object"}
    return version_id
