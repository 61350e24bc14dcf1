"""`GET /v1/predictions` filters, as Replicate's (`created_after`, `created_before`, `source`)
and Quern's (`status`, `model`, `version`): each alone, combined, across cursor pages (whose
URLs carry them), and refused with a 422 naming the parameter when malformed."""

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from db.repositories import predictions
from db.repositories.predictions import Cursor, Filters
from db.session import session_scope
from tests.support.helpers import assert_problem, register_admin, register_and_login

EMBED = "quern/all-minilm-l6-v2"
LLM = "quern/smollm2-135m-instruct"


def create(client: TestClient, auth: dict[str, str], model: str, **input: Any) -> dict[str, Any]:
    response = client.post("/v1/predictions", json={"model": model, "input": input}, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def listed(client: TestClient, auth: dict[str, str], **params: Any) -> list[str]:
    """The ids of the first page (100) of the caller's predictions with these filters."""
    response = client.get("/v1/predictions", params={"page_size": 100, **params}, headers=auth)
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()["results"]]


def walk(client: TestClient, auth: dict[str, str], url: str) -> list[dict[str, Any]]:
    """Every page from `url` on, following `next`."""
    pages = []
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url = pages[-1]["next"]
    return pages


@pytest.fixture(scope="module")
def made(client: TestClient) -> dict[str, Any]:
    """A user's predictions, oldest first: embeddings, text, embeddings..., one canceled."""
    auth = register_and_login(client)
    rows = []
    for i in range(7):
        if i % 3 == 1:
            rows.append(create(client, auth, LLM, prompt=f"t{i}"))
        else:
            rows.append(create(client, auth, EMBED, text=f"e{i}"))
    canceled = client.post(f"/v1/predictions/{rows[3]['id']}/cancel", headers=auth)
    assert canceled.json()["status"] == "canceled"
    rows[3] = canceled.json()
    return {"auth": auth, "rows": rows}


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in reversed(rows)]


def test_created_after_is_inclusive_and_created_before_exclusive(
    client: TestClient, made: dict[str, Any]
) -> None:
    auth, rows = made["auth"], made["rows"]
    middle = rows[3]["created_at"]
    assert listed(client, auth, created_after=middle) == newest_first(rows[3:])
    assert listed(client, auth, created_before=middle) == newest_first(rows[:3])
    between = {"created_after": rows[2]["created_at"], "created_before": rows[5]["created_at"]}
    assert listed(client, auth, **between) == newest_first(rows[2:5])
    assert listed(client, auth, created_after=rows[5]["created_at"],
                  created_before=rows[2]["created_at"]) == []  # fmt: skip


def test_a_moment_is_the_same_in_any_offset_and_without_one_is_utc(
    client: TestClient, made: dict[str, Any]
) -> None:
    auth, rows = made["auth"], made["rows"]
    moment = datetime.fromisoformat(rows[4]["created_at"])
    expected = newest_first(rows[4:])
    shifted = moment.astimezone(datetime.fromisoformat("2000-01-01T00:00:00+05:30").tzinfo)
    for text_ in (moment.isoformat(), shifted.isoformat(),
                  moment.replace(tzinfo=None).isoformat(),  # created_at is in UTC
                  moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")):  # fmt: skip
        assert listed(client, auth, created_after=text_) == expected, text_


def test_status_model_and_version(client: TestClient, made: dict[str, Any]) -> None:
    auth, rows = made["auth"], made["rows"]
    assert listed(client, auth, status="canceled") == [rows[3]["id"]]
    assert listed(client, auth, status="starting") == newest_first(rows[:3] + rows[4:])
    assert listed(client, auth, status="succeeded") == []
    texts = [row for row in rows if row["model"] == LLM]
    assert listed(client, auth, model=LLM) == newest_first(texts)
    assert listed(client, auth, version=texts[0]["version"]) == newest_first(texts)
    assert listed(client, auth, model="quern/no-such-model") == []
    assert listed(client, auth, version="a" * 26) == []


def test_source_api_is_every_prediction_made_here_and_web_none(
    client: TestClient, made: dict[str, Any]
) -> None:
    auth, rows = made["auth"], made["rows"]
    assert listed(client, auth, source="api") == newest_first(rows)
    response = client.get("/v1/predictions", params={"source": "web"}, headers=auth).json()
    assert response == {"next": None, "previous": None, "results": []}


def test_filters_combine(client: TestClient, made: dict[str, Any]) -> None:
    auth, rows = made["auth"], made["rows"]
    since = rows[2]["created_at"]
    embeddings = [row for row in rows[2:] if row["model"] == EMBED]
    assert listed(client, auth, model=EMBED, created_after=since) == newest_first(embeddings)
    unfinished = [row for row in embeddings if row is not rows[3]]
    assert listed(client, auth, model=EMBED, created_after=since, status="starting",
                  source="api") == newest_first(unfinished)  # fmt: skip
    assert listed(client, auth, model=LLM, status="canceled") == []


def test_pages_carry_the_filters_both_ways(client: TestClient, made: dict[str, Any]) -> None:
    auth, rows = made["auth"], made["rows"]
    embeddings = [row for row in rows if row["model"] == EMBED]  # 5 of them
    filters = {"model": EMBED, "created_after": rows[0]["created_at"], "source": "api"}
    first = client.get("/v1/predictions", params={"page_size": 2, **filters}, headers=auth)
    pages = walk(client, auth, str(first.url))
    assert [len(page["results"]) for page in pages] == [2, 2, 1]
    assert [p["id"] for page in pages for p in page["results"]] == newest_first(embeddings)
    for page in pages:
        for url in filter(None, (page["next"], page["previous"])):
            query = parse_qs(urlsplit(url).query)
            assert {k: v[0] for k, v in query.items() if k in filters} == {
                "model": EMBED,
                "created_after": datetime.fromisoformat(filters["created_after"]).isoformat(),
                "source": "api",
            }, url
    back = client.get(pages[-1]["previous"], headers=auth).json()
    assert back["results"] == pages[1]["results"]
    front = client.get(back["previous"], headers=auth).json()
    assert front["results"] == pages[0]["results"] and front["previous"] is None


def test_an_admin_filters_everyones_predictions(client: TestClient, made: dict[str, Any]) -> None:
    admin = register_admin(client)
    canceled = made["rows"][3]
    found = listed(client, admin, status="canceled", created_after=canceled["created_at"],
                   created_before=made["rows"][4]["created_at"])  # fmt: skip
    assert canceled["id"] in found
    assert listed(client, admin, created_after="9999-12-31T00:00:00Z") == []


@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00:00+23:59",  # before year 1 in UTC
        "9999-12-31T23:59:59.999999-23:59",  # after 9999 in UTC
        "2016-12-31T23:59:60Z",  # a leap second
        "2025-06-01T12:00:00.5-07:00",
        "2025-06-01t12:00:00z",
    ],
)
def test_every_date_time_the_document_allows_is_read(
    client: TestClient, auth: dict[str, str], moment: str
) -> None:
    for name in ("created_after", "created_before"):
        response = client.get("/v1/predictions", params={name: moment}, headers=auth)
        assert response.status_code == 200, (name, moment, response.text)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("created_after", "yesterday"),
        ("created_after", "2025-02-30T00:00:00Z"),
        ("created_before", "2025-01-01T25:00:00Z"),
        ("created_before", ""),
        ("source", "cli"),
        ("source", "API"),
        ("status", "done"),
        ("status", ""),
        ("model", "all-minilm-l6-v2"),
        ("model", "quern/all-minilm-l6-v2/extra"),
        ("model", "Quern/x"),
        ("version", "not-an-id"),
        ("version", "A" * 26),
    ],
)
def test_malformed_filters_are_422_naming_the_parameter(
    client: TestClient, auth: dict[str, str], name: str, value: str
) -> None:
    response = client.get("/v1/predictions", params={name: value}, headers=auth)
    assert_problem(response, 422, name)


def test_the_document_describes_each_filter(client: TestClient) -> None:
    from api.schemas.predictions import MODEL_REF_PATTERN
    from db.ids import ID_PATTERN

    document = client.get("/openapi.json").json()
    parameters = {p["name"]: p for p in document["paths"]["/v1/predictions"]["get"]["parameters"]}
    for name in ("created_after", "created_before"):
        schema = parameters[name]["schema"]
        assert (schema["type"], schema["format"]) == ("string", "date-time"), schema
        assert "anyOf" not in schema and "pattern" not in schema, schema
    assert parameters["source"]["schema"]["enum"] == ["api", "openai", "web"]
    status = parameters["status"]["schema"]
    status = document["components"]["schemas"][status["$ref"].rsplit("/", 1)[1]]
    assert set(status["enum"]) == {
        "starting", "processing", "succeeded", "failed", "canceled", "aborted"
    }  # fmt: skip
    assert parameters["model"]["schema"]["pattern"] == MODEL_REF_PATTERN
    assert parameters["version"]["schema"]["pattern"] == ID_PATTERN
    for name in ("created_after", "created_before", "source", "status", "model", "version"):
        assert not parameters[name].get("required"), name


def test_the_list_is_one_statement_on_the_owner_index(made: dict[str, Any]) -> None:
    """Every filter at once, from a cursor: one query, which walks
    (owner_id, created_at, id) newest first."""
    rows = made["rows"]
    with session_scope() as session:
        owner_id = session.execute(
            text("SELECT owner_id FROM predictions WHERE id = :id"), {"id": rows[0]["id"]}
        ).scalar_one()
        filters = Filters(
            created_after=datetime.fromisoformat(rows[0]["created_at"]),
            created_before=datetime.fromisoformat(rows[-1]["created_at"]) + timedelta(1),
            status="starting",
            model=("quern", "all-minilm-l6-v2"),
            version_id=rows[0]["version"],
        )
        last = Cursor(datetime.fromisoformat(rows[-1]["created_at"]), rows[-1]["id"])
        statements: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
            statements.append((statement, parameters))

        connection = session.connection()
        event.listen(connection, "before_cursor_execute", record)
        try:
            found = predictions.list(
                session, owner_id=owner_id, limit=10, after=last, filters=filters
            )
        finally:
            event.remove(connection, "before_cursor_execute", record)
        assert len(statements) == 1, statements
        assert [row.prediction.id for row in found] == [
            row["id"] for row in reversed(rows[:-1]) if row["model"] == EMBED and row is not rows[3]
        ]
        session.execute(text("SET LOCAL enable_seqscan = off"))
        statement, parameters = statements[0]
        plan = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars()
        assert "ix_predictions_owner_id_created_at_id" in "\n".join(plan)
