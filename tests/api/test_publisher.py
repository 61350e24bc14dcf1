"""The publisher: what piled up goes out as one message per (version, queue), at most 64 ids
each; a message Redis refuses leaves its rows for the sweeper."""

import base64
import json

import pytest
import redis

from api import queue
from api.settings import get_api_settings
from tests.conftest import API_REDIS_URL
from tests.support.helpers import create_prediction_row, create_version
from tests.workers.stubs import load


def messages(broker: redis.Redis, name: str) -> list[list[object]]:
    """The [prediction_ids, version_id] of each message on the queue, oldest first."""
    raw = reversed(broker.lrange(name, 0, -1))  # LPUSHed: newest first
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0] for m in raw]


def test_what_piled_up_is_sent_as_one_message_per_version_and_queue() -> None:
    broker = redis.Redis.from_url(API_REDIS_URL)
    broker.delete("predictions.cpu", "predictions.gpu")
    a, b = "a" * 26, "b" * 26
    items = [queue.Queued(f"{i:026d}", a, "cpu") for i in range(70)]
    items += [queue.Queued("x" * 26, b, "cpu"), queue.Queued("y" * 26, b, "gpu")]
    queue.publish(items)
    assert messages(broker, "predictions.cpu") == [
        [[f"{i:026d}" for i in range(64)], a],
        [[f"{i:026d}" for i in range(64, 70)], a],
        [["x" * 26], b],
    ]
    assert messages(broker, "predictions.gpu") == [[["y" * 26], b]]


def test_a_publisher_sends_everything_submitted_before_it_closes() -> None:
    broker = redis.Redis.from_url(API_REDIS_URL)
    broker.delete("predictions.cpu")
    publisher = queue.Publisher()
    ids = [f"{i:026d}" for i in range(200)]
    for prediction_id in ids:
        publisher.submit(prediction_id, "v" * 26, "cpu")
    publisher.close()
    sent = messages(broker, "predictions.cpu")
    assert [i for ids_, _ in sent for i in ids_] == ids  # type: ignore[attr-defined]
    assert all(len(ids_) <= 64 for ids_, _ in sent)  # type: ignore[arg-type]


def test_when_redis_refuses_the_rows_are_left_to_the_sweeper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    ids = [create_prediction_row(version) for _ in range(2)]
    assert all(load(i).enqueued_at is not None for i in ids)
    monkeypatch.setattr(get_api_settings(), "redis_url", "redis://127.0.0.1:1/0")
    queue.get_client.cache_clear()
    try:
        queue.publish([queue.Queued(i, version, "cpu") for i in ids])
    finally:
        queue.get_client.cache_clear()
    assert all(load(i).enqueued_at is None and load(i).status == "starting" for i in ids)
