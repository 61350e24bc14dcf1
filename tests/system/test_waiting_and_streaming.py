"""`Prefer: wait` and Server-Sent Events, end to end: uvicorn, PostgreSQL NOTIFY, Redis Streams,
a real Celery worker and real models."""

import asyncio
import collections
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import text

from db.session import session_scope
from db.settings import get_database_settings
from tests.conftest import WORKER_REDIS_URL
from tests.support.helpers import create_version, register_and_login
from tests.support.live import LiveStack
from tests.support.processes import wait_for_prediction

pytestmark = pytest.mark.slow

EMBEDDINGS = {"model": "quern/all-minilm-l6-v2", "input": {"text": "wait for me"}}
LLM = "quern/smollm2-135m-instruct"


def test_prefer_wait_returns_the_finished_prediction_in_one_request(live: LiveStack) -> None:
    response = live.client.post(
        "/v1/predictions", json=EMBEDDINGS, headers={**live.headers, "Prefer": "wait=30"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "succeeded" and len(body["output"]) == 384
    assert "Location" not in response.headers
    assert response.headers["Preference-Applied"] == "wait=30"


def test_prefer_wait_times_out_with_the_unfinished_prediction_and_location(
    live: LiveStack,
) -> None:
    # A batch window of 4 s keeps it queued past the 1 s wait, however fast the machine.
    version = create_version(max_batch_size=32, max_batch_wait_ms=4000)
    slow = {"version": version, "input": {"text": "not yet"}}
    response = live.client.post(
        "/v1/predictions", json=slow, headers={**live.headers, "Prefer": "wait=1"}, timeout=30
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "starting"  # as Replicate: its clients read others as finished
    assert response.headers["Location"] == body["urls"]["get"]
    live.client.post(f"/v1/predictions/{body['id']}/cancel", headers=live.headers)


@pytest.mark.parametrize("prefer", ["wait=0", "wait=61", "wait=soon"])
def test_a_bad_prefer_wait_is_400(live: LiveStack, prefer: str) -> None:
    response = live.client.post(
        "/v1/predictions", json=EMBEDDINGS, headers={**live.headers, "Prefer": prefer}
    )
    assert response.status_code == 400 and "Prefer" in response.json()["detail"]


def read_events(live: LiveStack, url: str, headers: dict[str, str] | None = None) -> list[dict]:
    """Every event of one SSE connection, until the server ends it."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {"data": []}
    with live.client.stream("GET", url, headers={**live.headers, **(headers or {})}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if current.get("event"):
                    events.append({**current, "data": "\n".join(current["data"])})
                current = {"data": []}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    current["data"].append(value)
                else:
                    current[field] = value
    return events


def test_tokens_stream_in_several_events_that_add_up_to_the_output(live: LiveStack) -> None:
    body = {"model": LLM, "input": {"prompt": "Name three colours.", "max_new_tokens": 24}}
    created = live.client.post("/v1/predictions", json=body, headers=live.headers).json()

    events = read_events(live, created["urls"]["stream"])
    outputs = [e for e in events if e["event"] == "output"]
    assert len(outputs) >= 3, events
    assert events[-1]["event"] == "done"
    assert json.loads(events[-1]["data"]) == {"status": "succeeded"}
    final = live.client.get(created["urls"]["get"], headers=live.headers).json()
    assert "".join(e["data"] for e in outputs) == final["output"]
    assert all(e.get("id") for e in outputs)

    # Reconnecting after the third token resumes with the fourth: nothing lost, nothing twice.
    resumed = read_events(live, created["urls"]["stream"], {"Last-Event-ID": outputs[2]["id"]})
    rest = [e for e in resumed if e["event"] == "output"]
    assert [e["id"] for e in rest] == [e["id"] for e in outputs[3:]]
    assert "".join(e["data"] for e in outputs[:3] + rest) == final["output"]


def test_a_stream_opened_after_the_end_replays_the_output(live: LiveStack) -> None:
    created = live.client.post("/v1/predictions", json=EMBEDDINGS, headers=live.headers).json()
    wait_for_prediction(live.client, created["urls"]["get"], live.headers, timeout=120)
    events = read_events(live, created["urls"]["stream"])
    assert [e["event"] for e in events] == ["output", "logs", "done"] or [
        e["event"] for e in events
    ][-1] == "done"
    outputs = [json.loads(e["data"]) for e in events if e["event"] == "output"]
    assert len(outputs) == 1 and len(outputs[0]) == 384


def test_a_failed_prediction_streams_error_then_done(live: LiveStack) -> None:
    created = live.client.post(
        "/v1/predictions",
        json={"model": LLM, "input": {"prompt": "🙂" * 3000}},
        headers=live.headers,
    ).json()
    events = read_events(live, created["urls"]["stream"])
    assert [e["event"] for e in events][-2:] == ["error", "done"]
    assert "tokens long" in events[-2]["data"]


def test_someone_elses_stream_is_404(live: LiveStack) -> None:
    created = live.client.post("/v1/predictions", json=EMBEDDINGS, headers=live.headers).json()
    other = register_and_login(live.client)
    response = live.client.get(created["urls"]["stream"], headers=other)
    assert response.status_code == 404


def test_streams_and_waits_of_a_canceled_prediction_end(live: LiveStack) -> None:
    version = create_version(max_batch_size=1, max_batch_wait_ms=0, builtin="smollm2-135m-instruct")
    body = {"version": version, "input": {"prompt": "Write a long story.", "max_new_tokens": 400}}
    created = live.client.post("/v1/predictions", json=body, headers=live.headers).json()
    with httpx.Client(base_url=live.base_url, timeout=60) as other:
        other.post(f"/v1/predictions/{created['id']}/cancel", headers=live.headers)
    events = read_events(live, created["urls"]["stream"])
    last = events[-1]
    assert (last["event"], last["data"]) == ("done", json.dumps({"status": "canceled"}))
    assert all(event.get("id") for event in events)  # Replicate's client drops id-less ones


def parked_prediction(live: LiveStack) -> str:
    """A prediction of a `gpu` version (no worker here takes it), whose row and event stream
    the test then writes as workers would."""
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    with session_scope() as session:
        session.execute(
            text("UPDATE model_versions SET hardware = 'gpu' WHERE id = :id"), {"id": version}
        )
    body = {"version": version, "input": {"text": "parked"}}
    return str(live.client.post("/v1/predictions", json=body, headers=live.headers).json()["id"])


def set_row(prediction_id: str, **values: Any) -> None:
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with session_scope() as session:
        session.execute(
            text(f"UPDATE predictions SET {assignments} WHERE id = :id"),  # noqa: S608
            {"id": prediction_id, **values},
        )


def add_entries(prediction_id: str, *entries: tuple[int, str]) -> None:
    """Output entries (attempt, text) as a worker publishes them."""
    client = redis.Redis.from_url(WORKER_REDIS_URL)
    for attempt, chunk in entries:
        fields = {"event": "output", "data": json.dumps(chunk), "attempt": attempt}
        client.xadd(f"quern:events:{prediction_id}", fields)  # type: ignore[arg-type]
    client.close()


def test_a_stream_read_after_a_retry_shows_only_the_recorded_attempt(live: LiveStack) -> None:
    prediction_id = parked_prediction(live)
    add_entries(prediction_id, (1, "first "), (1, "tr"), (2, "second "), (2, "try"))
    add_entries(prediction_id, (1, "y, late"))  # a paused worker that lost its claim, woken
    set_row(prediction_id, status="succeeded", attempts=2, output='"second try"')
    url = f"/v1/predictions/{prediction_id}/stream"

    events = read_events(live, url)
    outputs = [e for e in events if e["event"] == "output"]
    assert [e["data"] for e in outputs] == ["second ", "try"]
    assert [e["event"] for e in events][-1] == "done"
    resumed = read_events(live, url, {"Last-Event-ID": outputs[0]["id"]})
    assert [e["data"] for e in resumed if e["event"] == "output"] == ["try"]


def test_a_client_mid_stream_when_its_attempt_is_superseded_is_told_and_the_stream_ends(
    live: LiveStack,
) -> None:
    prediction_id = parked_prediction(live)
    set_row(prediction_id, status="processing", attempts=1)
    add_entries(prediction_id, (1, "first "))
    url = f"{live.base_url}/v1/predictions/{prediction_id}/stream"
    seen: list[str] = []
    with httpx.stream("GET", url, headers=live.headers, timeout=30) as response:
        lines = response.iter_lines()
        for line in lines:
            seen.append(line)
            if line == "data: first ":
                break
        # The worker died; the sweeper requeued it and another worker runs attempt 2.
        set_row(prediction_id, status="starting")
        set_row(prediction_id, status="processing", attempts=2)
        add_entries(prediction_id, (2, "second"))
        seen.extend(lines)
    assert "event: error" in seen and "data: second" not in seen
    assert any("Attempt 1 was interrupted" in line for line in seen)
    assert "event: done" not in seen


def test_an_output_after_a_quiet_spell_longer_than_a_socket_timeout_still_streams_live(
    live: LiveStack,
) -> None:
    """A model that loads for seconds before its first token: the blocked read waits for it
    (a read that timed out used to leave the stream silent until the prediction ended)."""
    prediction_id = parked_prediction(live)
    set_row(prediction_id, status="processing", attempts=1)
    url = f"{live.base_url}/v1/predictions/{prediction_id}/stream"
    try:
        # Each read may wait 3 s: the token must come then, not with the end.
        with httpx.stream("GET", url, headers=live.headers, timeout=3) as response:
            lines = response.iter_lines()
            time.sleep(7)  # the API's Redis client once timed reads out after 5 s
            add_entries(prediction_id, (1, "late token"))
            for line in lines:  # a read that waits over 3 s raises httpx.ReadTimeout
                if line == "data: late token":
                    break
    finally:
        set_row(prediction_id, status="canceled")


def _process_status(pid: int) -> dict[str, int]:
    """Resident memory (kB), threads and open sockets of a process, from /proc."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "sockets": sockets,
    }


def _database_connections(pid: int) -> int:
    """Connections a process opened (db/engine.py names them `quern-<role>-<pid>`)."""
    with session_scope() as session:
        return int(
            session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE :name"),
                {"name": f"quern-%-{pid}"},
            )
            or 0
        )


def test_500_concurrent_waits_all_finish_with_bounded_resources(live: LiveStack) -> None:
    """Bounded load on loopback: 500 clients each hold a `Prefer: wait=60` create open."""
    clients = 500
    before = _process_status(live.api_pid)
    peak: dict[str, int] = dict(before)
    peak_db = 0

    async def one(client: httpx.AsyncClient, n: int) -> dict[str, Any]:
        body = {"model": "quern/all-minilm-l6-v2", "input": {"text": f"load {n}"}}
        response = await client.post(
            "/v1/predictions", json=body, headers={**live.headers, "Prefer": "wait=60"}
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def sample(stop: asyncio.Event) -> None:
        nonlocal peak_db
        while not stop.is_set():
            now = _process_status(live.api_pid)
            for key, value in now.items():
                peak[key] = max(peak[key], value)
            peak_db = max(peak_db, await asyncio.to_thread(_database_connections, live.api_pid))
            await asyncio.sleep(0.5)

    async def run() -> tuple[list[dict[str, Any]], float]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=live.base_url, timeout=120, limits=limits) as client:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(stop))
            started = time.perf_counter()
            results = await asyncio.gather(*(one(client, n) for n in range(clients)))
            elapsed = time.perf_counter() - started
            stop.set()
            await sampler
            return results, elapsed

    results, elapsed = asyncio.run(run())
    statuses = collections.Counter(r["status"] for r in results)
    assert statuses == {"succeeded": clients}, (statuses, elapsed)
    after = _process_status(live.api_pid)
    print(
        f"\n500 concurrent Prefer: wait: all succeeded in {elapsed:.1f} s; API process "
        f"RSS {before['rss_kb'] // 1024} -> peak {peak['rss_kb'] // 1024} -> "
        f"{after['rss_kb'] // 1024} MB, threads {before['threads']} -> peak {peak['threads']}, "
        f"sockets {before['sockets']} -> peak {peak['sockets']}, "
        f"PostgreSQL connections of the API at peak {peak_db}"
    )
    # Waiting costs neither a thread nor a database connection per client. (Threads peak while
    # the creates pour in: FastAPI runs each request's dependency exit, the commit, on a thread
    # outside its pool of 40, so that a commit never waits behind a request.)
    assert peak["threads"] < clients // 2
    # At most what the API's pools hold (the thread pool's engine: size + overflow; the async
    # create path's: size) and its one LISTEN connection, whatever the number of clients.
    pools = get_database_settings()
    assert peak_db <= pools.pool_size + pools.max_overflow + pools.pool_size + 1, peak_db
    assert peak["rss_kb"] - before["rss_kb"] < 200 * 1024
