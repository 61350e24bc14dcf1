"""The whole pipeline for real: uvicorn → PostgreSQL → Redis → a Celery worker process → models."""

import math
import re

import httpx
import pytest
from celery import Celery

from db.ids import new_id
from tests.conftest import WORKER_REDIS_URL
from tests.support.helpers import create_version
from tests.support.live import LiveStack
from tests.support.processes import wait_for_prediction, wait_until

pytestmark = pytest.mark.slow


def create(
    live: LiveStack, model: str, input: dict[str, object], *, version: str | None = None
) -> dict[str, object]:
    body = {"version": version} if version else {"model": model}
    response = live.client.post(
        "/v1/predictions", json=body | {"input": input}, headers=live.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def test_embedding_prediction_succeeds_with_384_normalised_floats(live: LiveStack) -> None:
    # A new text: a repeat would be answered from the result cache, with no predict_time.
    created = create(live, "quern/all-minilm-l6-v2", {"text": f"Quern grinds {new_id()}."})
    url = f"/v1/predictions/{created['id']}"
    done = wait_for_prediction(live.client, url, live.headers, timeout=240)
    assert done["status"] == "succeeded", done
    output = done["output"]
    assert isinstance(output, list) and len(output) == 384
    assert all(isinstance(x, float) for x in output)
    assert math.isclose(math.sqrt(sum(x * x for x in output)), 1.0, rel_tol=1e-4)
    metrics = done["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["predict_time"] > 0 and metrics["attempts"] == 1 and metrics["batch_size"] == 1
    assert done["started_at"] and done["completed_at"] and "Predicted in" in str(done["logs"])


def test_a_repeated_embedding_is_answered_from_the_cache_with_the_same_vector(
    live: LiveStack,
) -> None:
    text = "The result cache remembers this sentence."
    first = create(live, "quern/all-minilm-l6-v2", {"text": text})
    done = wait_for_prediction(live.client, f"/v1/predictions/{first['id']}", live.headers, 240)
    metrics = done["metrics"]
    assert done["status"] == "succeeded" and isinstance(metrics, dict) and not metrics["cache_hit"]
    again = live.client.post(
        "/v1/predictions",
        json={"model": "quern/all-minilm-l6-v2", "input": {"text": text}},
        headers=live.headers | {"Prefer": "wait"},
    ).json()
    assert (again["status"], again["output"]) == ("succeeded", done["output"])
    assert again["metrics"]["cache_hit"] is True and again["id"] != done["id"]


def test_text_generation_prediction_succeeds_with_text(live: LiveStack) -> None:
    created = create(
        live,
        "quern/smollm2-135m-instruct",
        {"prompt": "What is the capital of France?", "max_new_tokens": 12, "temperature": 0},
    )
    done = wait_for_prediction(
        live.client, f"/v1/predictions/{created['id']}", live.headers, timeout=300
    )
    assert done["status"] == "succeeded", done
    assert isinstance(done["output"], str) and done["output"].strip()
    assert "Paris" in done["output"]


def test_a_duplicate_delivery_of_a_finished_prediction_changes_nothing(live: LiveStack) -> None:
    created = create(live, "quern/all-minilm-l6-v2", {"text": "once"})
    url = f"/v1/predictions/{created['id']}"
    done = wait_for_prediction(live.client, url, live.headers, timeout=240)
    assert done["status"] == "succeeded"

    broker = Celery(broker=WORKER_REDIS_URL, set_as_current=False)
    broker.send_task(
        "quern.predictions.run", args=[created["id"], created["version"]], queue="predictions.cpu"
    )
    wait_until(
        lambda: f"prediction {created['id']} is not startable" in live.worker_log.read_text(),
        60,
        "the worker to ignore the duplicate",
    )
    assert live.client.get(url, headers=live.headers).json() == done


def test_a_prompt_over_the_token_limit_fails_with_a_clear_error(live: LiveStack) -> None:
    created = create(live, "quern/smollm2-135m-instruct", {"prompt": "🙂" * 3000})
    done = wait_for_prediction(
        live.client, f"/v1/predictions/{created['id']}", live.headers, timeout=300
    )
    assert done["status"] == "failed"
    assert "the limit is 2048" in str(done["error"])


def test_predictions_queued_together_share_one_forward_pass(live: LiveStack) -> None:
    version = create_version(max_batch_size=6, max_batch_wait_ms=2000)
    created = [create(live, "", {"text": f"sentence {n}"}, version=version) for n in range(6)]
    done = [
        wait_for_prediction(live.client, f"/v1/predictions/{c['id']}", live.headers, 240)
        for c in created
    ]
    assert [d["status"] for d in done] == ["succeeded"] * 6
    assert [d["metrics"]["batch_size"] for d in done] == [6] * 6  # type: ignore[index]
    assert len({d["completed_at"] for d in done}) == 1  # recorded in one transaction
    metrics = httpx.get(live.worker_metrics).text
    assert re.search(
        r'^quern_batch_size_bucket\{le="8.0",model_type="embeddings"\} [1-9]', metrics, re.M
    )
    assert re.search(
        r'^quern_model_load_seconds_count\{model_type="embeddings"\} [1-9]', metrics, re.M
    )


def test_text_generation_batches_prompts_with_the_same_parameters(live: LiveStack) -> None:
    version = create_version(
        max_batch_size=3, max_batch_wait_ms=2000, builtin="smollm2-135m-instruct"
    )
    prompts = ["Say hello.", "What is 2 + 2? Answer with one word.", "Name a fruit."]
    created = [
        create(live, "", {"prompt": p, "max_new_tokens": 8, "temperature": 0}, version=version)
        for p in prompts
    ]
    done = [
        wait_for_prediction(live.client, f"/v1/predictions/{c['id']}", live.headers, 300)
        for c in created
    ]
    assert [d["status"] for d in done] == ["succeeded"] * 3, done
    assert all(isinstance(d["output"], str) and d["output"].strip() for d in done)
    assert [d["metrics"]["batch_size"] for d in done] == [3] * 3  # type: ignore[index]
