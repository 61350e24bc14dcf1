"""Webhooks for real: the live API, a model worker and a webhooks worker, posting to a real
receiver on loopback (allowed by QUERN_WEBHOOK_ALLOWED_NETWORKS in the live stack, where
retries wait 0.3-0.4 s, 0.6-0.8 s, 1.2-1.6 s... instead of minutes)."""

import itertools
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from db.ids import new_id
from tests.conftest import WORKER_REDIS_URL
from tests.support.live import LiveStack
from tests.support.processes import wait_for_prediction, wait_until
from tests.support.webhook_receiver import Answer, Received, Receiver, receiving

pytestmark = pytest.mark.slow

EMBED = "quern/all-minilm-l6-v2"
LLM = "quern/smollm2-135m-instruct"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def secret(live: LiveStack) -> str:
    key: str = live.client.get("/v1/webhooks/default/secret", headers=live.headers).json()["key"]
    return key


def run(live: LiveStack, webhook: str, **fields: Any) -> dict[str, Any]:
    """Create a prediction with this webhook and wait until it is finished (a new text each
    time: a repeat would be answered from the result cache, never `processing`)."""
    body = {"model": EMBED, "input": {"text": f"Quern grinds {new_id()}."}, "webhook": webhook}
    response = live.client.post("/v1/predictions", json=body | fields, headers=live.headers)
    assert response.status_code == 201, response.text
    url = f"/v1/predictions/{response.json()['id']}"
    return wait_for_prediction(live.client, url, live.headers, timeout=300)


def deliveries(live: LiveStack, prediction_id: str) -> list[dict[str, Any]]:
    """The delivery log, once no delivery is waiting or being sent."""
    url = f"/v1/predictions/{prediction_id}/webhooks"
    results: list[dict[str, Any]] = []

    def settled() -> bool:
        nonlocal results
        results = live.client.get(url, headers=live.headers).json()["results"]
        return all(d["status"] not in ("waiting", "pending", "delivering") for d in results)

    wait_until(settled, 60, f"the webhooks of {prediction_id}")
    return results


def verified(secret: str, got: Received) -> Any:
    return Webhook(secret).verify(got.body, got.headers)


def gaps(times: list[float]) -> list[float]:
    return [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]


def test_only_completed_is_sent_once_signed_and_equal_to_get(
    live: LiveStack, receiver: Receiver, secret: str
) -> None:
    done = run(live, receiver.url("/completed"), webhook_events_filter=["completed"])
    (got,) = receiver.wait_for("/completed", 1, 60)
    time.sleep(1)  # nothing else comes
    assert len(receiver.at("/completed")) == 1
    assert verified(secret, got) == done
    assert json.loads(got.body) == live.client.get(done["urls"]["get"], headers=live.headers).json()
    (delivery,) = deliveries(live, done["id"])
    assert delivery["id"] == got.headers["webhook-id"] and delivery["event"] == "completed"
    assert delivery["status"] == "succeeded"
    assert [(a["number"], a["status_code"]) for a in delivery["attempts"]] == [(1, 200)]
    assert delivery["attempts"][0]["latency_ms"] > 0


def test_a_streamed_generation_sends_start_throttled_growing_output_then_completed(
    live: LiveStack, receiver: Receiver, secret: str
) -> None:
    prompt = "Tell a long story about a miller and a river."
    done = run(
        live,
        receiver.url("/stream"),
        model=LLM,
        input={"prompt": prompt, "max_new_tokens": 72, "temperature": 0},
    )
    assert done["status"] == "succeeded", done
    log = deliveries(live, done["id"])
    events = {d["id"]: d for d in log}
    sent = [d for d in log if d["status"] == "succeeded"]
    # An `output` or `logs` that a later one (or `completed`) superseded before it was sent
    # is skipped: the last `logs`, written with `completed`, always is.
    assert [d for d in log if d not in sent and d["event"] not in ("output", "logs")] == [], log
    assert all(d["status"] == "skipped" for d in log if d not in sent), log
    got = receiver.wait_for("/stream", len(sent), 60)
    time.sleep(0.5)
    # One at a time, in the order written: as the delivery log lists them.
    assert [g.headers["webhook-id"] for g in receiver.at("/stream")] == [d["id"] for d in sent]
    bodies = [(events[g.headers["webhook-id"]]["event"], verified(secret, g), g) for g in got]

    start = [b for e, b, _ in bodies if e == "start"]
    outputs = [(b, g.at) for e, b, g in bodies if e == "output"]
    completed = [(b, g.at) for e, b, g in bodies if e == "completed"]
    assert len(start) == 1 and start[0]["status"] == "processing" and start[0]["output"] is None
    assert bodies[0][0] == "start"
    assert len(completed) == 1 and completed[0][0] == done

    # At most one output event per 500 ms, each with the text so far, growing to the output.
    chunks = [
        fields
        for _, fields in redis.Redis.from_url(WORKER_REDIS_URL).xrange(f"quern:events:{done['id']}")
        if fields[b"event"] == b"output"
    ]
    created = sorted(
        (datetime.fromisoformat(d["created_at"]).timestamp(), d["id"])
        for d in log
        if d["event"] == "output"
    )
    texts = [verified(secret, next(g for g in got if g.headers["webhook-id"] == i))["output"]
             for _, i in created if events[i] in sent]  # fmt: skip
    print(
        f"{len(chunks)} chunks, {len(outputs)} output webhooks; created "
        f"{gaps([t for t, _ in created])} s apart, arrived {gaps(sorted(at for _, at in outputs))}"
    )
    assert 2 <= len(outputs) < len(chunks) / 3
    assert min(gaps([t for t, _ in created])) >= 0.45
    assert all(b["status"] == "processing" for b, _ in outputs)
    for shorter, longer in pairwise(texts):
        assert longer.startswith(shorter) and len(longer) > len(shorter)
    # The last may already hold the whole text, when the final chunk fell due.
    assert done["output"].startswith(texts[-1])


def test_completed_waits_until_a_slow_receiver_has_answered_start(
    live: LiveStack, receiver: Receiver, secret: str
) -> None:
    """The embedding completes while the receiver still answers `start` (2 s): `completed`
    goes only then (it used to be sent at once, by another thread, and arrive first)."""
    warm = live.client.post(
        "/v1/predictions", json={"model": EMBED, "input": {"text": "warm"}}, headers=live.headers
    )  # the model loaded, the prediction completes within the 2 s
    wait_for_prediction(live.client, warm.json()["urls"]["get"], live.headers, timeout=300)
    url = receiver.script("/slow-start", Answer(200, delay_s=2.0), Answer(200))
    done = run(live, url, webhook_events_filter=["start", "completed"])
    got = receiver.wait_for("/slow-start", 2, 60)
    log = deliveries(live, done["id"])
    assert [(d["event"], d["status"]) for d in log] == [
        ("start", "succeeded"), ("completed", "succeeded")
    ]  # fmt: skip
    start, completed = log
    assert completed["created_at"] < start["completed_at"]  # written while `start` was on
    assert [verified(secret, g)["status"] for g in got] == ["processing", "succeeded"]
    assert verified(secret, got[1]) == done
    assert got[1].at - got[0].at >= 2.0


def test_a_receiver_failing_three_times_gets_one_id_with_growing_delays_then_a_redelivery(
    live: LiveStack, receiver: Receiver, secret: str
) -> None:
    url = receiver.script("/flaky", Answer(500), Answer(500), Answer(503), Answer(200))
    done = run(live, url, webhook_events_filter=["completed"])
    got = receiver.wait_for("/flaky", 4, 60)
    assert len({g.headers["webhook-id"] for g in got}) == 1
    assert {g.body for g in got} == {got[0].body} and verified(secret, got[-1]) == done
    delays = gaps([g.at for g in got])
    print(f"delays between the 4 attempts: {delays} s")
    assert delays == sorted(delays) and delays[0] >= 0.3 and delays[2] < 3

    (delivery,) = deliveries(live, done["id"])
    assert delivery["status"] == "succeeded"
    attempts = [(a["number"], a["status_code"]) for a in delivery["attempts"]]
    assert attempts == [(1, 500), (2, 500), (3, 503), (4, 200)]
    assert all(a["error"].startswith("HTTP 50") for a in delivery["attempts"][:3])

    again = live.client.post(
        f"/v1/predictions/{done['id']}/webhooks/redeliver", headers=live.headers
    )
    assert again.status_code == 202
    fifth = receiver.wait_for("/flaky", 5, 30)[4]
    assert fifth.headers["webhook-id"] == again.json()["id"] != got[0].headers["webhook-id"]
    assert fifth.body == got[0].body and verified(secret, fifth) == done


def test_410_stops_at_once_and_a_redirect_fails_without_being_followed(
    live: LiveStack, receiver: Receiver
) -> None:
    gone = run(live, receiver.script("/gone", Answer(410)), webhook_events_filter=["completed"])
    trap = receiver.url("/trap")  # allowed, so only the no-redirects rule keeps it quiet
    moved = receiver.script("/moved", Answer(302, {"location": trap}), Answer(204))
    redirected = run(live, moved, webhook_events_filter=["completed"])
    receiver.wait_for("/moved", 2, 60)
    time.sleep(1.5)  # a retry of the 410 would have come by now
    assert len(receiver.at("/gone")) == 1 and receiver.at("/trap") == []

    (stopped,) = deliveries(live, gone["id"])
    assert stopped["status"] == "stopped" and [a["status_code"] for a in stopped["attempts"]] == [
        410
    ]
    (delivery,) = deliveries(live, redirected["id"])
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 204]
    assert "not followed" in delivery["attempts"][0]["error"]
    assert delivery["status"] == "succeeded"

    metrics = httpx.get(live.webhooks_metrics).text
    for outcome in ("succeeded", "retried", "stopped"):
        assert re.search(
            rf'^quern_webhook_deliveries_total\{{event="completed",outcome="{outcome}"\}} [1-9]',
            metrics,
            re.M,
        ), outcome
