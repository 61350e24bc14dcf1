"""Small helpers shared by the tests."""

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text

from db.engine import process_label
from db.session import session_scope
from db.tables import Prediction


def new_username() -> str:
    return f"user-{secrets.token_hex(4)}"


def register_and_login(client: Any, username: str | None = None) -> dict[str, str]:
    """Authorization headers for a brand-new user."""
    username = username or new_username()
    password = secrets.token_urlsafe(12)
    response = client.post("/v1/auth/register", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    response = client.post("/v1/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def register_admin(client: Any) -> dict[str, str]:
    """Authorization headers for a brand-new administrator (promoted as an operator would)."""
    from api.admin import main

    username = new_username()
    headers = register_and_login(client, username)
    assert main(["promote", username]) == 0
    return headers


def create_version(
    *,
    max_batch_size: int,
    max_batch_wait_ms: int,
    builtin: str = "all-minilm-l6-v2",
    run_timeout_s: int | None = None,
    cache: dict[str, object] | None = None,
    input_schema: dict[str, object] | None = None,
    batching: str = "static",
) -> str:
    """A new model (owned by the system user) whose one version copies a built-in model's
    latest version with these batching limits and `batching` (and `cache`: the row's cache_*
    columns, e.g. `{"enabled": True}`; another `input_schema`). Returns the version id."""
    from db.repositories import models
    from db.seed import SYSTEM_USER

    with session_scope() as session:
        original = models.get(session, owner=SYSTEM_USER, name=builtin)
        assert original is not None and original.latest_version is not None
        base = original.latest_version
        model = models.create(session, owner_id=original.model.owner_id, name=new_username())
        version = models.copy_version(
            session,
            base,
            model_id=model.id,
            max_batch_size=max_batch_size,
            max_batch_wait_ms=max_batch_wait_ms,
            run_timeout_s=run_timeout_s,
            batching=batching,
        )
        for name, value in (cache or {}).items():
            setattr(version, f"cache_{name}", value)
        if input_schema is not None:
            version.input_schema = input_schema
        return version.id


def create_prediction_row(
    version_id: str | None = None, text: str = "x", deadline: datetime | None = None
) -> str:
    """A `starting` prediction of a new user (of the built-in embeddings model unless
    `version_id` is given), written straight to the database."""
    from db.repositories import models, predictions, users
    from db.seed import SYSTEM_USER

    with session_scope() as session:
        owner = users.create(session, username=new_username(), password_hash=None)
        if version_id is None:
            model = models.get(session, owner=SYSTEM_USER, name="all-minilm-l6-v2")
            assert model is not None and model.latest_version is not None
            version_id = model.latest_version.id
        return predictions.create(
            session,
            owner_id=owner.id,
            version_id=version_id,
            input={"text": text},
            deadline=deadline,
        ).id


def count_predictions() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Prediction)) or 0


def assert_problem(response: Any, status: int, *fields: str) -> dict[str, Any]:
    """A problem+json error with this status whose detail or invalid_fields names `fields`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    named = {item["field"] for item in body.get("invalid_fields", [])}
    for field in fields:
        assert field in named or field in body["detail"], (field, body)
    return body


def listening_backends(channel: str) -> list[int]:
    """This process's connections to the test database whose last statement LISTENed on
    `channel`."""
    with session_scope() as session:
        return list(
            session.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                     "AND application_name = :label AND query = :listen"),
                {"label": process_label(), "listen": f"LISTEN {channel}"},
            )
        )  # fmt: skip


def kill_listeners(channel: str) -> int:
    """Terminates `listening_backends(channel)`, as a PostgreSQL restart would; returns how many."""
    pids = listening_backends(channel)
    with session_scope() as session:
        for pid in pids:
            session.execute(select(func.pg_terminate_backend(pid)))
    return len(pids)
