"""Batches as the worker runs them, with a tiny stand-in predictor per behaviour.

Each test has its own model version (so its own batcher) and real rows in PostgreSQL; only the
model is a stand-in. The live worker and the real models are exercised in
tests/system/test_pipeline.py.
"""

import threading
import time
from typing import Any

import pytest

from db.storable import MAX_DEPTH
from models.base import PredictionError
from tests.support.helpers import create_prediction_row, create_version
from tests.workers.stubs import Recording, StandInRuntime, load, run_together
from workers.dynamic_batcher import Batcher, Pending
from workers.tasks.predictions import run_prediction


class RefusesOne(Recording):
    def embed(self, text: str) -> Any:
        return PredictionError("I refuse") if text == "bad" else super().embed(text)


class CrashesOnOne(Recording):
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        outputs = super().predict_batch(inputs)
        if any(item["text"] == "crash" for item in inputs):
            raise ValueError("bad\x00thing")
        return outputs


class OutOfMemoryAbove2(Recording):
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        if len(inputs) > 2:
            self.batches.append([f"OOM at {len(inputs)}"])
            raise MemoryError("CUDA out of memory (stand-in)")
        return super().predict_batch(inputs)


class ReturnsNaN(Recording):
    def embed(self, text: str) -> Any:
        return [1.0, float("nan")]


class ReturnsDeepNesting(Recording):
    def embed(self, text: str) -> Any:
        nested: Any = [1.0]
        for _ in range(300):  # past what pydantic serializes (~255) on the way out
            nested = [nested]
        return nested


def test_queued_predictions_for_one_version_run_in_a_single_batch(runtime: StandInRuntime) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    ids = [create_prediction_row(version, text="a" * n) for n in range(1, 6)]
    done = run_together(runtime, version, ids)
    assert predictor.batches == [["a", "aa", "aaa", "aaaa", "aaaaa"]]
    assert [p.output for p in done] == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    for p in done:
        assert p.status == "succeeded" and p.attempts == 1 and p.completed_at is not None
        assert p.metrics["batch_size"] == 5 and p.metrics["predict_time"] >= 0
        assert "(batch of 5)" in (p.logs or "")


def test_a_batch_never_exceeds_the_versions_max_batch_size(runtime: StandInRuntime) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=4, max_batch_wait_ms=300)
    done = run_together(runtime, version, [create_prediction_row(version) for _ in range(6)])
    assert [len(batch) for batch in predictor.batches] == [4, 2]
    assert sorted(p.metrics["batch_size"] for p in done) == [2, 2, 4, 4, 4, 4]


def test_an_input_the_model_refuses_fails_only_its_own_prediction(runtime: StandInRuntime) -> None:
    predictor = runtime.use(RefusesOne)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    ok, bad, also_ok = run_together(
        runtime, version, [create_prediction_row(version, text=t) for t in ("ok", "bad", "fine")]
    )
    assert len(predictor.batches) == 1
    assert (ok.status, ok.output, also_ok.status, also_ok.output) == (
        "succeeded", [2.0], "succeeded", [4.0],
    )  # fmt: skip
    assert bad.status == "failed" and bad.error == "I refuse" and bad.output is None


def test_an_input_that_crashes_the_model_is_isolated_by_splitting_the_batch(
    runtime: StandInRuntime,
) -> None:
    runtime.use(CrashesOnOne)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    texts = ["a", "b", "crash", "d", "e"]
    done = run_together(runtime, version, [create_prediction_row(version, text=t) for t in texts])
    statuses = {p.input["text"]: p.status for p in done}
    assert statuses == {"a": "succeeded", "b": "succeeded", "crash": "failed",
                        "d": "succeeded", "e": "succeeded"}  # fmt: skip
    crashed = next(p for p in done if p.input["text"] == "crash")
    assert crashed.error == "ValueError: bad\\0thing"  # NUL made storable


def test_a_batch_out_of_memory_is_split_in_halves_until_it_fits(runtime: StandInRuntime) -> None:
    predictor = runtime.use(OutOfMemoryAbove2)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    done = run_together(runtime, version, [create_prediction_row(version, text=t) for t in "abcde"])
    assert all(p.status == "succeeded" for p in done), [p.error for p in done]
    assert [p.output for p in done] == [[1.0]] * 5
    assert predictor.batches == [["OOM at 5"], ["a", "b"], ["OOM at 3"], ["c"], ["d", "e"]]
    assert [p.metrics["batch_size"] for p in done] == [2, 2, 1, 2, 2]


def test_an_unstorable_output_fails_the_prediction_instead_of_leaving_it_processing(
    runtime: StandInRuntime,
) -> None:
    runtime.use(ReturnsNaN)
    version = create_version(max_batch_size=8, max_batch_wait_ms=0)
    (prediction,) = run_together(runtime, version, [create_prediction_row(version)])
    assert prediction.status == "failed"
    assert "output[1]" in prediction.error and "NaN" in prediction.error


def test_an_output_nested_too_deep_fails_with_a_clear_error(runtime: StandInRuntime) -> None:
    runtime.use(ReturnsDeepNesting)
    version = create_version(max_batch_size=8, max_batch_wait_ms=0)
    (prediction,) = run_together(runtime, version, [create_prediction_row(version)])
    assert prediction.status == "failed" and prediction.output is None
    assert f"deeper than {MAX_DEPTH}" in prediction.error


def test_a_duplicate_delivery_in_the_same_batch_runs_the_model_once(
    runtime: StandInRuntime,
) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    prediction_id = create_prediction_row(version)
    first, _ = run_together(runtime, version, [prediction_id, prediction_id])
    assert predictor.batches == [["x"]] and first.status == "succeeded" and first.attempts == 1


def test_the_task_returns_only_after_its_prediction_is_recorded(runtime: StandInRuntime) -> None:
    runtime.use(Recording)
    version = create_version(max_batch_size=4, max_batch_wait_ms=50)
    ids = [create_prediction_row(version) for _ in range(3)]
    threads = [threading.Thread(target=run_prediction.run, args=(id, version)) for id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(load(id).status == "succeeded" for id in ids)


def test_one_message_of_many_ids_runs_them_in_one_batch_and_returns_once_all_are_recorded(
    runtime: StandInRuntime,
) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=50)
    ids = [create_prediction_row(version, text="a" * n) for n in range(1, 4)]
    run_prediction.run([*ids, ids[0]], version)  # a duplicate id in the same message
    assert predictor.batches == [["a", "aa", "aaa"]]
    assert [(p.status, p.output, p.attempts) for p in map(load, ids)] == [
        ("succeeded", [1.0], 1), ("succeeded", [2.0], 1), ("succeeded", [3.0], 1),
    ]  # fmt: skip


def test_a_message_of_an_older_api_with_one_plain_id_still_runs(runtime: StandInRuntime) -> None:
    runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=0)
    prediction_id = create_prediction_row(version, text="old")
    run_prediction.run(prediction_id, version)
    assert (load(prediction_id).status, load(prediction_id).output) == ("succeeded", [3.0])


def test_a_redelivered_message_runs_only_the_ids_not_yet_recorded(runtime: StandInRuntime) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=0)
    done, fresh = (
        create_prediction_row(version, text="1"),
        create_prediction_row(version, text="22"),
    )
    run_prediction.run([done], version)
    run_prediction.run([done, fresh], version)  # the same message again, with one more id
    assert predictor.batches == [["1"], ["22"]]
    assert [load(id).attempts for id in (done, fresh)] == [1, 1]


@pytest.mark.slow  # waits out three 2 s batch windows
def test_an_idle_model_runs_a_lone_prediction_without_waiting_out_the_window(
    runtime: StandInRuntime,
) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=2000)
    run_together(runtime, version, [create_prediction_row(version)])  # a new batcher waits
    time.sleep(0.1)
    started = time.monotonic()
    (done,) = run_together(runtime, version, [create_prediction_row(version)])
    assert time.monotonic() - started < 1.5  # not the 2 s window: nothing else was coming
    assert done.status == "succeeded" and predictor.batches == [["x"], ["x"]]
    # Busy again: a group of two makes the next one wait out the window for company.
    ids = [create_prediction_row(version) for _ in range(2)]
    run_together(runtime, version, ids)
    run_together(runtime, version, [create_prediction_row(version) for _ in range(3)])
    assert [len(batch) for batch in predictor.batches[2:]] == [2, 3]


def test_items_that_queued_behind_a_running_batch_do_not_wait_out_the_window_again() -> None:
    """The window counts from the first item's arrival: a busy model goes from one group to
    the next without idling."""
    groups: list[tuple[list[str], float]] = []

    def handle(batch: list[Pending[str]]) -> None:
        groups.append(([pending.item for pending in batch], time.monotonic()))
        time.sleep(0.8 if len(groups) == 1 else 0)
        for pending in batch:
            pending.future.set_result(None)

    batcher = Batcher("window", handle, max_size=8, max_wait_s=0.5)
    first = [batcher.submit(item) for item in "ab"]
    time.sleep(0.7)  # the first group is running
    late = batcher.submit("c")
    for future in [*first, late]:
        future.result(timeout=10)
    (a, first_started), (c, second_started) = groups
    assert (a, c) == (["a", "b"], ["c"])
    # "c" waited 0.6 s behind the first group: it goes as that one ends, not a window later.
    assert second_started - first_started < 0.8 + 0.4


def test_identical_inputs_in_one_batch_of_a_caching_version_are_computed_once(
    runtime: StandInRuntime,
) -> None:
    predictor = runtime.use(Recording)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300, cache={"enabled": True})
    texts = ["same", "other", "same", "same"]
    done = run_together(runtime, version, [create_prediction_row(version, text=t) for t in texts])
    assert predictor.batches == [["same", "other"]]
    assert [(p.status, p.output) for p in done] == [("succeeded", [float(len(t))]) for t in texts]

    uncached = create_version(max_batch_size=8, max_batch_wait_ms=300)
    run_together(runtime, uncached, [create_prediction_row(uncached, text="same") for _ in "ab"])
    assert predictor.batches[-1] == ["same", "same"]  # without the cache: each runs
