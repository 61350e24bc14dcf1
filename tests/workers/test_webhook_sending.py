"""One webhook attempt against a real receiver on loopback (allowed for these tests), and the
retry policy that follows it."""

import ipaddress
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from common.webhook_guard import get_guard_settings
from db.repositories import predictions, users, webhook_deliveries
from db.repositories.predictions import UNFINISHED
from db.repositories.webhook_deliveries import Claim
from db.repositories.webhook_secrets import new_secret
from db.session import session_scope
from db.settings import get_database_settings
from db.tables import DeliveryStatus, PredictionStatus, WebhookDelivery
from tests.support.helpers import create_version, new_username
from tests.support.webhook_receiver import Answer, Received, Receiver, receiving
from workers.settings import WorkerSettings, get_worker_settings
from workers.webhooks import dispatcher, sending
from workers.webhooks.delivery import deliver, next_step, retry_delay

BODY = json.dumps({"id": "p1", "status": "succeeded", "output": "héllo"}, ensure_ascii=False)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setattr(
        get_guard_settings(), "allowed_networks", [ipaddress.ip_network("127.0.0.1/32")]
    )
    with receiving() as receiver:
        yield receiver


def only(name: str, address: str) -> Any:
    """A resolver that knows one name."""

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        if host != name:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_the_body_goes_signed_to_the_checked_address_naming_the_host(receiver: Receiver) -> None:
    secret = new_secret()
    headers = sending.signed_headers(secret, "delivery-1", BODY)
    url = f"http://hooks.test:{receiver.port}/ok?x=1"
    result = sending.send(url, BODY, headers, 5, resolve=only("hooks.test", "127.0.0.1"))
    assert (result.status_code, result.error, result.succeeded) == (200, None, True)
    (got,) = receiver.at("/ok")
    assert got.headers["host"] == f"hooks.test:{receiver.port}"
    assert got.headers["user-agent"].startswith("Quern")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(got.body, got.headers) == json.loads(BODY)
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(got.body, got.headers)


def test_a_redirect_is_a_failure_and_is_never_followed(receiver: Receiver) -> None:
    url = receiver.script(
        "/moved", Answer(302, {"location": "http://169.254.169.254/latest/meta-data/"})
    )
    result = sending.send(url, BODY, {}, 5)
    assert result.status_code == 302 and not result.succeeded
    assert "not followed" in str(result.error) and "169.254.169.254" in str(result.error)
    assert len(receiver.received) == 1


def test_a_slow_receiver_is_cut_off_at_the_time_limit(receiver: Receiver) -> None:
    url = receiver.script("/slow", Answer(200, delay_s=3))
    started = time.monotonic()
    result = sending.send(url, BODY, {}, 0.5)
    assert result.status_code is None and result.error == "No answer within 0.5s"
    assert time.monotonic() - started < 1.5


def test_a_huge_answer_is_read_only_up_to_the_limit(receiver: Receiver) -> None:
    url = receiver.script("/huge", Answer(500, body=b"\x00e" * 4_000_000))
    result = sending.send(url, BODY, {}, 5)
    assert result.status_code == 500
    assert result.error is not None and len(result.error) < 250 and "\x00" not in result.error


def test_a_target_the_guard_refuses_is_never_contacted(receiver: Receiver) -> None:
    result = sending.send(f"http://127.0.0.2:{receiver.port}/x", BODY, {}, 5)
    assert result.status_code is None
    assert result.error == "Refused: 127.0.0.2 is a loopback address"
    redirect_by_dns = only("rebind.test", "169.254.169.254")
    result = sending.send("http://rebind.test/x", BODY, {}, 5, resolve=redirect_by_dns)
    assert "cloud metadata" in str(result.error)
    assert receiver.received == []


def test_retry_after_of_a_429_is_read(receiver: Receiver) -> None:
    url = receiver.script("/busy", Answer(429, {"retry-after": "7"}))
    assert sending.send(url, BODY, {}, 5).retry_after_s == 7.0


def utf8(text: str) -> str:
    """`text` as its UTF-8 bytes on the wire (http.server writes header values in Latin-1)."""
    return text.encode().decode("latin-1")


@pytest.mark.parametrize(
    "value",
    ["²", utf8("²"), utf8("٣"), "1.5", "-3", "soon", "Wed, 21 Oct 99999 07:28:00 GMT", ""],
)
def test_a_retry_after_that_is_neither_digits_nor_a_date_is_ignored(
    receiver: Receiver, value: str
) -> None:
    """ "²" and "٣" pass str.isdigit(); float("²") raises, float("٣") is 3.0."""
    url = receiver.script("/odd", Answer(503, {"retry-after": value}))
    result = sending.send(url, BODY, {}, 5)
    assert (result.status_code, result.retry_after_s) == (503, None)


def create(webhook: str, events: list[str]) -> str:
    """A `starting` prediction of a new user with this webhook."""
    with session_scope() as session:
        owner = users.create(session, username=new_username(), password_hash=None)
        return predictions.create(
            session,
            owner_id=owner.id,
            version_id=create_version(max_batch_size=1, max_batch_wait_ms=0),
            input={"text": "x"},
            webhook=webhook,
            webhook_events_filter=events,
        ).id


def start(prediction_id: str) -> None:
    """A worker takes it: `processing`, attempt 1 (the trigger writes `start`)."""
    with session_scope() as session:
        assert predictions.claim(session, ids=[prediction_id], lease_s=60)


def output(prediction_id: str, so_far: str) -> None:
    """A streamed `output` event, as the running worker writes it."""
    with session_scope() as session:
        assert webhook_deliveries.add_streamed_output(
            session, prediction_id=prediction_id, attempt=1, output=so_far
        )


def finish(prediction_id: str, status: PredictionStatus = PredictionStatus.SUCCEEDED) -> None:
    with session_scope() as session:
        assert predictions.update_status(
            session, id=prediction_id, from_statuses=UNFINISHED, status=status, output="done"
        )


def test_an_attempt_with_a_garbage_retry_after_is_recorded_and_retried_later(
    receiver: Receiver,
) -> None:
    url = receiver.script("/odd", Answer(503, {"retry-after": utf8("²")}))
    prediction_id = create(url, ["completed"])
    with session_scope() as session:
        assert predictions.update_status(
            session, id=prediction_id, from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )
        # Published, as far as a dispatcher can tell: this test delivers it, not the live
        # stack's webhooks worker (once a slow test has started it, it runs to the end).
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.prediction_id == prediction_id)
            .values(enqueued_at=func.now())
        )
    with session_scope() as session:
        (delivery_id,) = session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.prediction_id == prediction_id)
        )
    deliver(delivery_id)
    with session_scope() as session:
        (log,) = webhook_deliveries.list_for_prediction(
            session, prediction_id=prediction_id, limit=10
        )
        wait_s = session.scalar(
            select(func.extract("epoch", WebhookDelivery.next_attempt_at - func.now())).where(
                WebhookDelivery.id == delivery_id
            )
        )
    assert (log.delivery.status, log.delivery.attempts) == ("pending", 1)
    assert [(a.number, a.status_code) for a in log.attempts] == [(1, 503)]
    base_s = get_worker_settings().webhook_retry_base_s
    assert wait_s is not None and 0.7 * base_s <= float(wait_s) <= base_s


def claim(attempt: int, age_s: float = 0) -> Claim:
    created = datetime.now(UTC) - timedelta(seconds=age_s)
    return Claim("d", "completed", "u", "p", {}, None, attempt, created, "o", "m/n")


def result(status_code: int | None, retry_after_s: float | None = None) -> sending.Result:
    return sending.Result(status_code, None if status_code == 200 else "x", 1.0, retry_after_s)


def test_what_follows_an_attempt() -> None:
    settings = WorkerSettings(
        webhook_max_attempts=4, webhook_retry_base_s=10, webhook_retry_cap_s=100,
        webhook_retry_horizon_s=3600,
    )  # fmt: skip
    assert next_step(claim(1), result(204), settings) == (DeliveryStatus.SUCCEEDED, None)
    assert next_step(claim(1), result(410), settings) == (DeliveryStatus.STOPPED, None)
    for code in (None, 301, 400, 404, 408, 500, 503):
        status, wait = next_step(claim(2), result(code), settings)
        assert status == DeliveryStatus.PENDING and wait is not None and 15 <= wait <= 20
    assert next_step(claim(1), result(429, 40), settings) == (DeliveryStatus.PENDING, 40)
    assert next_step(claim(1), result(429, 9999), settings) == (DeliveryStatus.PENDING, 100)
    for retry_after_s in (0, 1, 15):  # a minimum: it never shortens the backoff
        status, wait = next_step(claim(2), result(503, retry_after_s), settings)
        assert status == DeliveryStatus.PENDING and wait is not None and 15 <= wait <= 20
    assert next_step(claim(4), result(500), settings) == (DeliveryStatus.FAILED, None)
    assert next_step(claim(1, age_s=3601), result(500), settings) == (DeliveryStatus.FAILED, None)
    _, wait = next_step(claim(1, age_s=3599), result(500), settings)
    assert wait is not None and wait <= 1.01  # the last attempt at the horizon


def test_each_retry_waits_longer_than_the_one_before_below_the_cap() -> None:
    for _ in range(200):
        waits = [retry_delay(attempt, 1.0, 1000) for attempt in range(1, 8)]
        assert waits == sorted(waits)
        assert all(0.75 * 2 ** (n - 1) <= w <= 2 ** (n - 1) for n, w in enumerate(waits, start=1))


class InlineWorkers:
    """Stands in for Redis and the webhooks workers' thread pool: each delivery the dispatcher
    publishes is delivered at once in a thread of its own (any thread may take any message, as
    in a webhooks worker). Deliveries of other tests' predictions are left alone."""

    def __init__(self, prediction_ids: list[str]) -> None:
        self.prediction_ids = set(prediction_ids)
        self.threads: list[threading.Thread] = []

    def send_task(self, name: str, args: list[str], queue: str) -> None:
        with session_scope() as session:
            delivery = session.get_one(WebhookDelivery, args[0])
            if delivery.prediction_id not in self.prediction_ids:
                return
        thread = threading.Thread(target=deliver, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)


@contextmanager
def dispatching(*prediction_ids: str) -> Iterator[None]:
    """The real dispatcher (NOTIFY-driven, its usual 5 s interval) publishing to InlineWorkers."""
    settings = get_worker_settings().model_copy(update={"webhook_dispatch_interval_s": 5.0})
    workers = InlineWorkers(list(prediction_ids))
    stopping = threading.Event()
    thread = threading.Thread(
        target=dispatcher.run, args=(workers, settings, stopping), daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        with psycopg.connect(get_database_settings().libpq_url, autocommit=True) as conn:
            conn.execute(f"NOTIFY {dispatcher.CHANNEL}")  # wakes it to see `stopping`
        thread.join(10)
        for worker in workers.threads:
            worker.join(10)


def events_of(got: list[Received]) -> list[str]:
    """The event of each request received, from the delivery its webhook-id names."""
    with session_scope() as session:
        return [session.get_one(WebhookDelivery, g.headers["webhook-id"]).event for g in got]


def statuses(prediction_id: str) -> list[tuple[str, str]]:
    with session_scope() as session:
        log = webhook_deliveries.list_for_prediction(session, prediction_id=prediction_id, limit=50)
    return [(d.delivery.event, d.delivery.status) for d in log]


@pytest.mark.slow  # a receiver that answers each in a second
def test_a_predictions_deliveries_go_one_at_a_time_in_the_order_written(
    receiver: Receiver,
) -> None:
    """The receiver is slow to answer: `output` is written while `start` is being sent, and
    the prediction completes while `output` is. Each waits until the one before is answered,
    then goes at once (NOTIFY, not the dispatcher's 5 s interval)."""
    url = receiver.script("/ordered", Answer(200, delay_s=1.0), Answer(200, delay_s=1.0), Answer())
    prediction_id = create(url, ["start", "output", "completed"])
    with dispatching(prediction_id):
        start(prediction_id)
        receiver.wait_for("/ordered", 1, 10)  # `start` is being answered, slowly
        output(prediction_id, "Once")
        receiver.wait_for("/ordered", 2, 10)  # and now `output`
        finish(prediction_id)
        got = receiver.wait_for("/ordered", 3, 10)
        time.sleep(0.3)  # nothing else comes
    assert len(receiver.at("/ordered")) == 3
    assert events_of(got) == ["start", "output", "completed"]
    assert json.loads(got[1].body)["output"] == "Once"
    assert json.loads(got[2].body)["status"] == "succeeded"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(got)]
    assert all(1.0 <= gap < 2.0 for gap in gaps), gaps  # after the answer before, at once
    assert statuses(prediction_id) == [
        ("start", "succeeded"), ("output", "succeeded"), ("completed", "succeeded")
    ]  # fmt: skip


def test_a_retried_delivery_holds_back_the_next_and_superseded_progress_is_skipped(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`start` fails (slowly) and waits for its retry: the outputs written meanwhile are
    superseded by `completed` and skipped; `completed` goes only after `start` succeeded."""
    monkeypatch.setattr(get_worker_settings(), "webhook_retry_base_s", 0.3)
    url = receiver.script("/retried", Answer(500, delay_s=0.5), Answer(200))
    prediction_id = create(url, ["start", "output", "logs", "completed"])
    with dispatching(prediction_id):
        start(prediction_id)
        receiver.wait_for("/retried", 1, 10)
        output(prediction_id, "Once")
        output(prediction_id, "Once upon")
        finish(prediction_id)
        got = receiver.wait_for("/retried", 3, 10)
        time.sleep(0.3)
    assert len(receiver.at("/retried")) == 3
    assert events_of(got) == ["start", "start", "completed"]
    assert got[1].at - got[0].at >= 0.5 + 0.3 * 0.75  # the answer, then the backoff
    assert statuses(prediction_id) == [
        ("start", "succeeded"), ("output", "skipped"), ("output", "skipped"),
        ("completed", "succeeded"),
    ]  # fmt: skip


@pytest.mark.slow  # a receiver that answers in 1.5 s, twice
def test_a_slow_receiver_holds_up_only_its_own_predictions_webhooks(receiver: Receiver) -> None:
    slow = create(receiver.script("/slow-one", Answer(200, delay_s=1.5)), ["start", "completed"])
    fast = create(receiver.url("/fast-one"), ["start", "completed"])
    with dispatching(slow, fast):
        start(slow)
        receiver.wait_for("/slow-one", 1, 10)
        finish(slow)
        start(fast)
        finish(fast)
        fast_got = receiver.wait_for("/fast-one", 2, 10)
        slow_got = receiver.wait_for("/slow-one", 2, 10)
    assert events_of(fast_got) == ["start", "completed"]
    assert events_of(slow_got) == ["start", "completed"]
    assert fast_got[1].at < slow_got[0].at + 1.5 <= slow_got[1].at
