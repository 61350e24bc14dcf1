"""Continuous batching through the worker's own path: real rows, real Redis, real SmolLM2.

A request added while a long one generates starts and finishes before it; a cancel stops a row
mid-stream and the others go on; an input that crashes the model fails alone.
"""

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from db.repositories import predictions, users
from db.repositories.predictions import UNFINISHED
from db.session import session_scope
from db.tables import PredictionStatus
from tests.support.helpers import create_version, new_username
from tests.support.processes import wait_until
from tests.workers.stubs import StandInRuntime, load
from tests.workers.test_events import outputs, stream
from workers import engine as engine_module
from workers import metrics
from workers.engine import Engine

# The real model, generating for seconds on 2 cores.
slow = pytest.mark.slow

LONG = "Count from 1 to 300, one number per line."


def generation(version_id: str, prompt: str, max_new_tokens: int, **more: Any) -> str:
    with session_scope() as session:
        owner = users.create(session, username=new_username(), password_hash=None)
        item = {"prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": 0, "top_p": 1}
        return predictions.create(
            session, owner_id=owner.id, version_id=version_id, input=item | more
        ).id


def continuous(max_batch_size: int = 8) -> str:
    return create_version(
        max_batch_size=max_batch_size,
        max_batch_wait_ms=0,
        builtin="smollm2-135m-instruct",
        batching="continuous",
    )


def submit(runtime: StandInRuntime, version: str, ids: list[str]) -> list[Any]:
    engine = runtime.batcher_for(version)
    assert isinstance(engine, Engine)
    return [engine.submit(id) for id in ids]


@slow
def test_a_request_added_mid_batch_starts_and_ends_before_the_running_one(
    runtime: StandInRuntime,
) -> None:
    version = continuous()
    long = generation(version, LONG, 160)
    (long_done,) = submit(runtime, version, [long])
    wait_until(lambda: len(outputs(long)) >= 5, 120, "the long generation to stream")
    short = generation(version, "Say hello.", 6)
    (short_done,) = submit(runtime, version, [short])
    short_done.result(timeout=120)
    during = load(long)
    assert during.status == "processing"  # still generating when the short one was recorded
    long_done.result(timeout=300)
    first, second = load(long), load(short)
    assert first.status == second.status == "succeeded"
    assert first.started_at < second.started_at < second.completed_at < first.completed_at
    assert second.metrics["batch_size"] == 2 and second.metrics["output_token_count"] <= 6
    assert first.metrics["output_token_count"] > 50  # it may end (EOS) before 160
    for done in (first, second):  # streamed token by token, then recorded whole
        chunks = outputs(done.id)
        assert len(chunks) >= 3 and "".join(chunks) == done.output
        assert stream(done.id)[-1][0] == "logs"
    assert metrics.RUNNING_SEQUENCES.labels(runtime.model_ref(version))._value.get() == 0


@pytest.fixture
def listening(runtime: StandInRuntime) -> None:
    """The runtime's lease heartbeat and cancel listener, as a worker process starts them."""
    runtime.start_leases()


@slow
@pytest.mark.usefixtures("listening")
def test_a_cancel_stops_its_row_mid_stream_and_the_others_go_on(runtime: StandInRuntime) -> None:
    version = continuous()
    stopped, kept = generation(version, LONG, 200), generation(version, "Name three colors.", 24)
    futures = submit(runtime, version, [stopped, kept])
    wait_until(lambda: len(outputs(stopped)) >= 3, 120, "the generation to stream")
    with session_scope() as session:  # what POST /v1/predictions/{id}/cancel does
        predictions.update_status(
            session, id=stopped, from_statuses=UNFINISHED, status=PredictionStatus.CANCELED
        )
    for future in futures:
        future.result(timeout=300)
    canceled, finished = load(stopped), load(kept)
    assert canceled.status == "canceled" and "Canceled while running" in canceled.logs
    assert len(outputs(stopped)) < 100  # stopped at the next step, not at 200 tokens
    assert finished.status == "succeeded" and "".join(outputs(kept)) == finished.output


@slow
def test_an_input_that_crashes_the_model_fails_alone(
    runtime: StandInRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = continuous()
    predictor: Any = runtime.get_predictor(runtime.get_version(version))[0].predictor
    prompts = ["Say hi.", "Spell zebra-xylophone.", "Say bye."]

    def tokens(prompt: str) -> set[int]:
        rendered = predictor.chat_prompt({"prompt": prompt})
        return set(predictor.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    culprit = tokens(prompts[1]) - tokens(prompts[0]) - tokens(prompts[2])
    forward = predictor.model.forward

    def crashing(*args: Any, input_ids: Any = None, **kwargs: Any) -> Any:
        if input_ids.shape[1] > 1 and culprit & set(input_ids.flatten().tolist()):
            raise RuntimeError("the model crashed on this input")
        return forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(predictor.model, "forward", crashing)
    ids = [generation(version, prompt, 8) for prompt in prompts]
    too_long = generation(version, "word " * 3000, 8)
    for future in submit(runtime, version, [*ids, too_long]):
        future.result(timeout=300)
    done = [load(id) for id in [*ids, too_long]]
    assert [p.status for p in done] == ["succeeded", "failed", "succeeded", "failed"]
    assert done[1].error == "RuntimeError: the model crashed on this input"
    assert "limit is 2048" in (done[3].error or "")
    assert done[0].output and done[2].output


def test_a_claim_the_database_refuses_fails_the_tasks_futures_so_they_retry(
    runtime: StandInRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = continuous()
    ids = [generation(version, "Say hi.", 4) for _ in range(2)]

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(engine_module.predictions, "claim", unreachable)
    for future in submit(runtime, version, ids):
        with pytest.raises(OperationalError):
            future.result(timeout=30)
    assert [load(id).status for id in ids] == ["starting", "starting"]


@slow
def test_out_of_memory_in_a_step_admits_fewer_and_the_newest_retries(
    runtime: StandInRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from models import continuous as steps

    version = continuous()
    first, second = generation(version, LONG, 40), generation(version, "Say hi.", 8)
    real_sample = steps.sample
    raised: list[int] = []

    def out_of_memory(logits: Any, rows: Any) -> list[int]:
        if len(rows) == 2 and not raised:
            raised.append(len(rows))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_sample(logits, rows)

    monkeypatch.setattr(steps, "sample", out_of_memory)
    (first_done,) = submit(runtime, version, [first])
    wait_until(lambda: len(outputs(first)) >= 2, 120, "the first generation to stream")
    (second_done,) = submit(runtime, version, [second])
    second_done.result(timeout=120)
    retried = load(second)
    assert retried.status == "starting" and retried.attempts == 1  # waits out a retry delay
    assert "OutOfMemoryError" in retried.logs and "retrying" in retried.logs
    first_done.result(timeout=300)
    assert load(first).status == "succeeded"
    engine = runtime.batcher_for(version)
    assert isinstance(engine, Engine) and engine.capacity == 1
