"""Rate limits (shared through Redis), idempotent creates, and per-user resource limits."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from api import rate_limits
from api.settings import get_api_settings
from db.repositories import idempotency_keys
from db.session import session_scope
from db.tables import IdempotencyKey
from tests.support.helpers import (
    assert_problem,
    count_predictions,
    new_username,
    register_and_login,
)

BODY = {"model": "quern/all-minilm-l6-v2", "input": {"text": "hello"}}


@pytest.fixture
def settings(monkeypatch):
    """The live settings object, for lowering one limit within a test."""
    settings = get_api_settings()
    yield settings


def test_writes_are_limited_per_caller_with_headers_and_retry_after(
    client: TestClient, auth, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "rate_limit_write", "3/minute")
    remaining = []
    for _ in range(3):
        response = client.post("/v1/predictions", json=BODY, headers=auth)
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert int(response.headers["X-RateLimit-Reset"]) > 0
        remaining.append(response.headers["X-RateLimit-Remaining"])
        # What one process counted, another sees: the counts live in Redis, not in memory.
        rate_limits._limiter.cache_clear()
    assert remaining == ["2", "1", "0"]

    before = count_predictions()
    refused = client.post("/v1/predictions", json=BODY, headers=auth)
    assert_problem(refused, 429, "Rate limit")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert count_predictions() == before

    # Reads have their own budget, and another caller has their own.
    assert client.get("/v1/predictions", headers=auth).status_code == 200
    other = register_and_login(client)
    assert client.post("/v1/predictions", json=BODY, headers=other).status_code == 201


def test_reads_are_limited_separately(client: TestClient, auth, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "rate_limit_read", "2/minute")
    assert client.get("/v1/account", headers=auth).headers["X-RateLimit-Limit"] == "2"
    assert client.get("/v1/predictions", headers=auth).status_code == 200
    assert_problem(client.get("/v1/account", headers=auth), 429)
    assert client.post("/v1/predictions", json=BODY, headers=auth).status_code == 201


def test_all_of_an_accounts_tokens_share_one_budget(
    client: TestClient, auth, settings, monkeypatch
) -> None:
    """More tokens must not mean more requests: the limits count the account."""
    token = client.post("/v1/tokens", json={"name": "a"}, headers=auth).json()["token"]
    by_token = {"Authorization": f"Bearer {token}"}
    monkeypatch.setattr(settings, "rate_limit_read", "2/minute")
    assert client.get("/v1/account", headers=auth).status_code == 200
    assert client.get("/v1/account", headers=by_token).status_code == 200
    assert_problem(client.get("/v1/account", headers=by_token), 429)
    assert_problem(client.get("/v1/account", headers=auth), 429)
    other = register_and_login(client)
    assert client.get("/v1/account", headers=other).status_code == 200


def test_requests_with_invalid_tokens_spend_the_per_address_budget(
    client: TestClient, settings, monkeypatch
) -> None:
    # Its own amount, so its own count (limits keys a window by the limit): 3, not another 2.
    monkeypatch.setattr(settings, "rate_limit_auth", "3/minute")
    for _ in range(3):
        assert_problem(client.get("/v1/account", headers={"Authorization": "Bearer qrn_x"}), 401)
    assert_problem(client.get("/v1/account", headers={"Authorization": "Bearer qrn_y"}), 429)
    assert_problem(client.get("/v1/account"), 429)  # no credentials at all: the same budget


def test_sign_in_attempts_are_limited_per_address(
    client: TestClient, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "rate_limit_auth", "2/minute")
    form = {"username": new_username(), "password": "wrong-password"}
    for _ in range(2):
        assert_problem(client.post("/v1/auth/token", data=form), 401)
    refused = client.post("/v1/auth/token", data=form)
    assert_problem(refused, 429)
    assert "Retry-After" in refused.headers


def test_redis_down_lets_requests_through(client: TestClient, auth, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "redis_url", "redis://127.0.0.1:1/0")
    response = client.get("/v1/account", headers=auth)
    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers


def _create(client: TestClient, auth, key: str, body=BODY):  # type: ignore[no-untyped-def]
    return client.post("/v1/predictions", json=body, headers={**auth, "Idempotency-Key": key})


def test_same_key_and_body_returns_the_first_prediction(client: TestClient, auth) -> None:
    before = count_predictions()
    first = _create(client, auth, "order-42")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    # Same meaning, other formatting: still the same request.
    again = client.post(
        "/v1/predictions",
        content='{"input": {"text": "hello"},   "model": "quern/all-minilm-l6-v2"}',
        headers={**auth, "Idempotency-Key": "order-42", "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert count_predictions() == before + 1


def test_same_key_with_another_body_is_422(client: TestClient, auth) -> None:
    _create(client, auth, "k-1")
    other = {**BODY, "input": {"text": "something else"}}
    assert_problem(_create(client, auth, "k-1", other), 422, "Idempotency-Key")


def test_keys_belong_to_their_user(client: TestClient, auth) -> None:
    mine = _create(client, auth, "shared-key").json()
    theirs = _create(client, register_and_login(client), "shared-key").json()
    assert mine["id"] != theirs["id"]


def test_a_concurrent_duplicate_is_409(client: TestClient, auth) -> None:
    user_id = client.get("/v1/account", headers=auth).json()["id"]
    before = count_predictions()
    with session_scope() as session:  # the first request, still in its transaction
        assert idempotency_keys.try_lock(session, owner_id=user_id, key="busy")
        assert_problem(_create(client, auth, "busy"), 409, "in progress")
    assert count_predictions() == before
    assert _create(client, auth, "busy").status_code == 201


def test_a_refused_request_does_not_use_up_its_key(client: TestClient, auth) -> None:
    bad = {**BODY, "input": {"text": 5}}
    assert_problem(_create(client, auth, "retry-me", bad), 422, "input.text")
    assert _create(client, auth, "retry-me").status_code == 201


def test_a_key_older_than_24_hours_starts_afresh(client: TestClient, auth) -> None:
    first = _create(client, auth, "yesterday").json()
    with session_scope() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "yesterday")
            .values(created_at=text("now() - interval '25 hours'"))
        )
    second = _create(client, auth, "yesterday")
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    assert "Idempotent-Replayed" not in second.headers


@pytest.mark.parametrize("key", ["has space", "x" * 256, ""])
def test_malformed_keys_are_refused(client: TestClient, auth, key: str) -> None:
    assert_problem(_create(client, auth, key), 422, "Idempotency-Key")


def test_predictions_in_flight_per_user_are_limited(
    client: TestClient, auth, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "max_in_flight_per_user", 2)
    first = client.post("/v1/predictions", json=BODY, headers=auth).json()
    client.post("/v1/predictions", json=BODY, headers=auth)
    refused = client.post("/v1/predictions", json=BODY, headers=auth)
    assert_problem(refused, 429, "in flight")
    assert refused.headers["Retry-After"]
    client.post(f"/v1/predictions/{first['id']}/cancel", headers=auth)
    assert client.post("/v1/predictions", json=BODY, headers=auth).status_code == 201


def test_input_strings_are_capped_server_wide(
    client: TestClient, auth, settings, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "max_input_string_chars", 10)
    body = {**BODY, "input": {"text": "x" * 11}}
    problem = assert_problem(client.post("/v1/predictions", json=body, headers=auth), 422)
    assert problem["invalid_fields"] == [
        {"field": "input.text", "message": "Longer than 10 characters"}
    ]


def test_failed_sign_ins_are_limited_per_account_from_any_address(
    client: TestClient, settings, monkeypatch
) -> None:
    """Guessing one account's password from many addresses: after 3 failures it answers 429,
    even to the right password; another account is not affected, and successes never count."""
    monkeypatch.setattr(settings, "rate_limit_signin_failures", "3/minute")
    victim, other = new_username(), new_username()
    for name in (victim, other):
        password = "the right password"
        client.post("/v1/auth/register", json={"username": name, "password": password})
    right = {"username": victim, "password": "the right password"}
    for _ in range(3):  # successes do not use up the budget
        assert client.post("/v1/auth/token", data=right).status_code == 200
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        wrong = client.post(
            "/v1/auth/token",
            data={"username": victim, "password": "a wrong guess"},
            headers={"X-Forwarded-For": address},
        )
        assert_problem(wrong, 401)
    refused = client.post("/v1/auth/token", data=right)
    assert_problem(refused, 429, "signin-failures")
    assert int(refused.headers["Retry-After"]) >= 1
    assert (
        client.post(
            "/v1/auth/token", data={"username": other, "password": "the right password"}
        ).status_code
        == 200
    )


def test_a_hit_and_its_headers_cost_one_redis_round_trip(settings, monkeypatch) -> None:
    """The hit and the window it leaves come back in one pipeline; the numbers are limits' own
    (its two round trips give the same), and a Redis that lost its scripts counts once."""
    import asyncio

    import redis as sync_redis
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    monkeypatch.setattr(settings, "rate_limit_write", "10/minute")
    identity = new_username()
    trips = []
    real_command, real_pipeline = Redis.execute_command, Pipeline.execute

    async def command(self, *args, **options):
        trips.append(args[0])
        return await real_command(self, *args, **options)

    async def pipeline(self, *args, **options):
        trips.append("pipeline")
        return await real_pipeline(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", command)
    monkeypatch.setattr(Pipeline, "execute", pipeline)

    async def hits() -> list[rate_limits.Usage | None]:
        usages = [await rate_limits.hit(settings, "write", identity) for _ in range(2)]
        trips.clear()
        usages.append(await rate_limits.hit(settings, "write", identity))
        assert trips == ["pipeline"]
        sync_redis.Redis.from_url(settings.redis_url).script_flush()
        usages.append(await rate_limits.hit(settings, "write", identity))
        storage = RedisStorage("async+" + settings.redis_url, implementation="redispy")
        plain = SlidingWindowCounterRateLimiter(storage)
        stats = await plain.get_window_stats(rate_limits._item("10/minute"), "write", identity)
        assert stats.remaining == 6
        return usages

    rate_limits._limiter.cache_clear()
    usages = asyncio.run(hits())
    rate_limits._limiter.cache_clear()
    assert [usage.remaining for usage in usages if usage] == [9, 8, 7, 6]
