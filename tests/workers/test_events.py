"""Events a running prediction publishes to its Redis Stream (what the API serves as SSE).

Real batches, real rows, real Redis (database 14, the in-process workers' REDIS_URL); only
the model is a stand-in, except in the test that streams SmolLM2's tokens.
"""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import torch

from common.contract import events_key
from db.repositories import predictions
from db.session import session_scope
from db.tables import PredictionStatus
from models.base import emit_outputs, output_sink
from models.text_generation import RowStreamer
from tests.conftest import API_REDIS_URL
from tests.support.helpers import create_prediction_row, create_version, new_username
from tests.workers.stubs import Recording, StandInRuntime, load, run_together
from workers import batch_run, events, recording
from workers.events import EventPublisher
from workers.runtime import WorkerRuntime

UNREACHABLE = "redis://127.0.0.1:1/0"

Entries = list[tuple[str, Any]]


def stream(prediction_id: str) -> Entries:
    """(event, decoded data) of every entry, in order; each entry has exactly the three fields,
    its attempt the first (the only one in these tests)."""
    entries = []
    for _, fields in redis.Redis.from_url(API_REDIS_URL).xrange(events_key(prediction_id)):
        assert set(fields) == {b"event", b"data", b"attempt"} and fields[b"attempt"] == b"1"
        entries.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
    return entries


def outputs(prediction_id: str) -> list[Any]:
    return [data for event, data in stream(prediction_id) if event == "output"]


class Streams(Recording):
    """Emits each text in three steps (every row at each step), then returns them joined."""

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        texts = [item["text"] for item in inputs]
        self.batches.append(texts)
        for step in range(3):
            emit_outputs({i: f"{text}:{step} " for i, text in enumerate(texts)})
        if "crash" in texts:
            raise ValueError("crashed after streaming")
        return ["".join(f"{text}:{step} " for step in range(3)) for text in texts]


@pytest.fixture
def at_commit(monkeypatch: pytest.MonkeyPatch) -> dict[str, Entries]:
    """Each prediction's stream as it stood right after the worker's commit that made it
    terminal: what the API drains when PostgreSQL tells it the prediction is done."""
    seen: dict[str, Entries] = {}
    real_scope = recording.session_scope

    @contextmanager
    def spied_scope() -> Iterator[Any]:
        with real_scope() as session:
            yield session
            ids = list(session.info.get("watched", []))
        for prediction_id in ids:
            if (
                prediction_id not in seen
                and PredictionStatus(load(prediction_id).status).is_terminal
            ):
                seen[prediction_id] = stream(prediction_id)

    real_fate = recording._fate

    def watching_fate(runtime: Any, session: Any, claim: Any, *args: Any) -> Any:
        session.info.setdefault("watched", []).append(claim.id)
        return real_fate(runtime, session, claim, *args)

    monkeypatch.setattr(recording, "session_scope", spied_scope)
    monkeypatch.setattr(recording, "_fate", watching_fate)
    return seen


def test_streamed_chunks_then_logs_are_in_each_stream_before_it_is_terminal(
    runtime: StandInRuntime, at_commit: dict[str, Entries], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = runtime.use(Streams)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    ids = [create_prediction_row(version, text=text) for text in ("a", "b", "c")]
    running_ttl: dict[str, int] = {}
    real_hand_over = batch_run.hand_over

    def noting_ttl(runtime: Any, version: Any, claims: Any, *args: Any) -> None:
        for claim in claims:  # streamed, not yet recorded
            running_ttl[claim.id] = redis.Redis.from_url(API_REDIS_URL).ttl(events_key(claim.id))
        real_hand_over(runtime, version, claims, *args)

    monkeypatch.setattr(batch_run, "hand_over", noting_ttl)
    done = run_together(runtime, version, ids)
    assert predictor.batches == [["a", "b", "c"]]
    for prediction, text in zip(done, "abc", strict=True):
        assert prediction.status == "succeeded"
        entries = stream(prediction.id)
        assert entries[:3] == [("output", f"{text}:{step} ") for step in range(3)]
        assert len(entries) == 4 and entries[3][0] == "logs"
        assert entries[3][1].startswith("Predicted in ") and "(batch of 3)" in entries[3][1]
        assert "".join(outputs(prediction.id)) == prediction.output  # no whole output again
        assert entries[-1][1] + "\n" == prediction.logs  # the logs this attempt appended
        assert at_commit[prediction.id] == entries
        # Kept a day while it ran, ten minutes once its last entries are in.
        assert running_ttl[prediction.id] > events.FINISHED_TTL_S
        ttl = redis.Redis.from_url(API_REDIS_URL).ttl(events_key(prediction.id))
        assert events.FINISHED_TTL_S - 100 < ttl <= events.FINISHED_TTL_S


def test_a_model_that_does_not_stream_gets_its_whole_output_as_one_entry(
    runtime: StandInRuntime, at_commit: dict[str, Entries]
) -> None:
    runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    done = run_together(
        runtime, version, [create_prediction_row(version, text=t) for t in ("ab", "cde")]
    )
    for prediction in done:
        entries = stream(prediction.id)
        assert [event for event, _ in entries] == ["output", "logs"]
        assert entries[0][1] == prediction.output == [float(len(prediction.input["text"]))]
        assert "(batch of 2)" in entries[1][1]
        assert at_commit[prediction.id] == entries


def test_chunks_follow_their_own_prediction_when_a_batch_is_split(runtime: StandInRuntime) -> None:
    runtime.use(Streams)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    texts = ["a", "crash", "c", "d"]
    done = run_together(runtime, version, [create_prediction_row(version, text=t) for t in texts])
    assert [p.status for p in done] == ["succeeded", "failed", "succeeded", "succeeded"]
    for prediction, text in zip(done, texts, strict=True):
        chunks = outputs(prediction.id)
        assert chunks and all(chunk.startswith(f"{text}:") for chunk in chunks)
        assert stream(prediction.id)[-1][0] == "logs"
    # Known limit: a run that raised had already streamed; its chunks stay, then the rerun's.
    assert len(outputs(done[0].id)) == 3 * 3  # the whole batch, its half, then alone


def test_with_redis_unreachable_predictions_still_succeed_with_one_warning(
    runtime: StandInRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.events = EventPublisher(UNREACHABLE)
    runtime.use(Streams)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    with caplog.at_level(logging.WARNING, logger=events.__name__):
        done = run_together(
            runtime, version, [create_prediction_row(version, text=t) for t in "ab"]
        )
    assert [(p.status, p.output) for p in done] == [
        ("succeeded", "a:0 a:1 a:2 "), ("succeeded", "b:0 b:1 b:2 "),
    ]  # fmt: skip
    assert stream(done[0].id) == []
    warnings = [r for r in caplog.records if r.name == events.__name__]
    assert len(warnings) == 1 and "could not publish" in warnings[0].getMessage()


class LosesRedisAtStep1(Streams):
    """Redis is unreachable for step 1 only; back (and not paused) for step 2."""

    runtime: WorkerRuntime

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        reachable = self.runtime.events
        for step in range(3):
            self.runtime.events = EventPublisher(UNREACHABLE) if step == 1 else reachable
            emit_outputs({i: f"{item['text']}:{step} " for i, item in enumerate(inputs)})
        return ["".join(f"{item['text']}:{step} " for step in range(3)) for item in inputs]


def test_after_a_lost_chunk_a_prediction_streams_no_more_so_its_chunks_stay_a_prefix(
    runtime: StandInRuntime,
) -> None:
    predictor = runtime.use(LosesRedisAtStep1)
    predictor.runtime = runtime
    version = create_version(max_batch_size=8, max_batch_wait_ms=0)
    (done,) = run_together(runtime, version, [create_prediction_row(version, text="a")])
    assert done.status == "succeeded" and done.output == "a:0 a:1 a:2 "
    assert [event for event, _ in stream(done.id)] == ["output", "logs"]
    assert outputs(done.id) == ["a:0 "]  # the API sends the rest from the stored output


def test_the_row_streamer_holds_back_split_characters_and_ignores_finished_rows() -> None:
    """Tokens are bytes here: '🙂' takes four steps and must come out whole."""
    end = 256
    rows = ["h\u00e9 🙂!".encode(), b"ok"]  # row 1 ends early, then gets pad (end) tokens
    steps = max(len(row) for row in rows) + 1
    columns = [[*row, *[end] * (steps - len(row))] for row in rows]

    def decode(tokens: list[int]) -> str:
        return bytes(t for t in tokens if t != end).decode("utf-8", errors="replace")

    sent: list[dict[int, str]] = []
    streamer = RowStreamer(decode, indices=[3, 1], finished={end})  # rows -> batch indices
    with output_sink(lambda chunks: sent.append(dict(chunks))):
        streamer.put(torch.tensor([[7, 7], [7, 7]]))  # the prompt
        for step in range(steps):
            streamer.put(torch.tensor([column[step] for column in columns]))
        streamer.finish([decode(column) for column in columns])
    for index, row in ((3, rows[0]), (1, rows[1])):
        chunks = [chunks[index] for chunks in sent if index in chunks]
        assert "".join(chunks) == row.decode() and not any("\ufffd" in c for c in chunks)
    assert "🙂" in [chunks.get(3) for chunks in sent]  # four tokens, one chunk
    assert sum(1 in chunks for chunks in sent) == 2  # "o", "k": nothing once it ended


def create_generation_row(version_id: str, prompt: str) -> str:
    from db.repositories import users

    with session_scope() as session:
        owner = users.create(session, username=new_username(), password_hash=None)
        item = {"prompt": prompt, "max_new_tokens": 16, "temperature": 0, "top_p": 0.9}
        return predictions.create(session, owner_id=owner.id, version_id=version_id, input=item).id


@pytest.mark.slow
def test_smollm2_streams_every_row_of_a_batch_token_by_token(
    runtime: StandInRuntime, at_commit: dict[str, Entries]
) -> None:
    version = create_version(
        max_batch_size=3, max_batch_wait_ms=500, builtin="smollm2-135m-instruct"
    )
    prompts = ["Count from one to ten.", "Write a haiku about snow.", "Say hello in French."]
    ids = [create_generation_row(version, p) for p in prompts]
    futures = [runtime.batcher_for(version).submit(id) for id in ids]
    for future in futures:
        future.result(timeout=300)  # seconds alone; far longer on 2 busy cores
    done = [load(id) for id in ids]
    for prediction in done:
        assert prediction.status == "succeeded" and prediction.metrics["batch_size"] == 3
        chunks = outputs(prediction.id)
        assert len(chunks) >= 5 and all(isinstance(chunk, str) and chunk for chunk in chunks)
        assert "".join(chunks) == prediction.output
        assert stream(prediction.id)[-1][0] == "logs"
        assert at_commit[prediction.id] == stream(prediction.id)

    # Its tokenizer spells rare characters in bytes: half a character decodes to U+FFFD.
    predictor: Any = runtime.get_predictor(runtime.get_version(version))[0].predictor
    tokens = predictor.tokenizer("a 🦖🧬 ok", add_special_tokens=False)["input_ids"]
    assert "\ufffd" in predictor.decode(tokens[:2])
    sent: list[str] = []
    streamer = RowStreamer(predictor.decode, [0], predictor.row_ends)
    with output_sink(lambda chunks: sent.append(chunks[0])):
        for step in [[[1]], *[[token] for token in tokens]]:
            streamer.put(torch.tensor(step))
        streamer.finish([predictor.decode(tokens)])
    assert sent == ["a", " 🦖", "🧬", " ok"]
