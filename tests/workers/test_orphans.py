"""A worker that dies holding messages it had not started: a real process takes a real Celery
message from Redis without acknowledging it and is SIGKILLed; the sweeper finds the message,
sends its queued predictions again and forgets it, unless a live worker holds them."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from common.contract import RUN_PREDICTION_TASK
from db.ids import new_id
from db.repositories import predictions
from db.session import session_scope
from tests.support.helpers import create_prediction_row
from tests.support.processes import ROOT
from tests.workers.stubs import load
from workers import broker_memory, orphans, sweeper
from workers.celery_app import app
from workers.settings import WorkerSettings

TAKE_AND_HANG = """
import sys, time
from kombu import Connection
with Connection(sys.argv[1]) as connection:
    connection.SimpleQueue(sys.argv[2]).get(timeout=30)  # delivered, never acknowledged
    print("taken", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def broker(settings: WorkerSettings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def taken_by_a_worker_that_dies(
    settings: WorkerSettings, broker: redis.Redis, ids: list[str]
) -> str:
    """Send a `run` message of `ids`, let a process take it and SIGKILL that process; returns
    the message's delivery tag."""
    queue = f"test-orphans-{new_id()}"
    app.send_task(RUN_PREDICTION_TASK, args=[ids, "some-version"], queue=queue)
    taker = subprocess.Popen(
        [sys.executable, "-c", TAKE_AND_HANG, settings.redis_url, queue],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert taker.stdout is not None and taker.stdout.readline().strip() == b"taken"
    finally:
        os.killpg(taker.pid, signal.SIGKILL)
        taker.wait()
    (message,) = [m for m in orphans.delivered_before(broker, 0) if m.prediction_ids == ids]
    return message.tag


def unacked(broker: redis.Redis, tag: str) -> bool:
    in_index = broker.zscore(orphans.UNACKED_INDEX, tag) is not None
    return bool(broker.hexists(orphans.UNACKED, tag)) or in_index


def test_a_message_a_dead_worker_took_is_found_with_its_ids(
    settings: WorkerSettings, broker: redis.Redis
) -> None:
    ids = [create_prediction_row(), create_prediction_row()]
    tag = taken_by_a_worker_that_dies(settings, broker, ids)
    assert unacked(broker, tag)
    assert tag not in [m.tag for m in orphans.delivered_before(broker, 60)]  # not old enough


def test_the_sweeper_sends_a_dead_workers_unstarted_predictions_again_and_forgets_it(
    settings: WorkerSettings, broker: redis.Redis
) -> None:
    settings.lease_s = 0.2
    ids = [create_prediction_row(), create_prediction_row()]
    tag = taken_by_a_worker_that_dies(settings, broker, ids)
    sent_at = {id: load(id).enqueued_at for id in ids}
    time.sleep(0.3)
    assert sweeper.sweep(app, settings, broker) >= 2
    for id in ids:
        again = load(id)
        assert again.status == "starting" and again.enqueued_at > sent_at[id]  # a new message
    assert not unacked(broker, tag)  # never delivered a second time


def test_a_message_whose_predictions_a_live_worker_holds_is_left_alone(
    settings: WorkerSettings, broker: redis.Redis
) -> None:
    settings.lease_s = 0.2
    held, free = create_prediction_row(), create_prediction_row()
    tag = taken_by_a_worker_that_dies(settings, broker, [held, free])
    time.sleep(0.3)
    with session_scope() as session:  # a live worker's heartbeat leases what it received
        predictions.lease_held(session, ids=[held], lease_s=30)
    before = load(held).enqueued_at
    sweeper.sweep(app, settings, broker)
    assert load(held).enqueued_at == before and load(free).enqueued_at > before
    assert unacked(broker, tag)


def test_a_held_prediction_whose_lease_ran_out_is_sent_again(
    settings: WorkerSettings, broker: redis.Redis
) -> None:
    prediction_id = create_prediction_row()
    with session_scope() as session:  # held by a worker that then died
        predictions.lease_held(session, ids=[prediction_id], lease_s=0.1)
    before = load(prediction_id).enqueued_at
    time.sleep(0.2)
    sweeper.sweep(app, settings, broker)
    again = load(prediction_id)
    assert (again.status, again.attempts, again.lease_expires_at) == ("starting", 0, None)
    assert again.enqueued_at > before


def test_when_redis_lost_its_messages_every_queued_prediction_is_sent_again(
    settings: WorkerSettings, broker: redis.Redis
) -> None:
    queued = create_prediction_row()
    sweeper.sweep(app, settings, broker)  # sets the marker, if this Redis had none
    sent_at = load(queued).enqueued_at
    sweeper.sweep(app, settings, broker)
    assert load(queued).enqueued_at == sent_at  # its message is presumed in Redis
    broker.delete(f"{broker_memory.KEY_PREFIX}predictions")  # as a restart without persistence
    sweeper.sweep(app, settings, broker)
    assert load(queued).enqueued_at > sent_at  # sent again at once, not after 900 s
    assert not broker_memory.lost(broker, "predictions")
