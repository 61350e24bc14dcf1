"""Worker log lines name the prediction (or the batch's predictions) they concern."""

from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import task_postrun, task_prerun

from common import log_format
from tests.support.helpers import create_prediction_row, create_version
from tests.support.log_lines import Lines, capture_lines
from tests.workers.stubs import Recording, StandInRuntime, run_together
from workers import batch_run
from workers.tasks.predictions import run_prediction


@pytest.fixture
def lines() -> Iterator[Lines]:
    yield from capture_lines()


class CrashesOnOne(Recording):
    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        if any(item["text"] == "crash" for item in inputs):
            raise ValueError("the stand-in model crashed")
        return super().predict_batch(inputs)


def test_batch_lines_carry_the_batchs_prediction_ids_and_the_culprits_id(
    monkeypatch: pytest.MonkeyPatch, runtime: StandInRuntime, lines: Lines
) -> None:
    runtime.use(CrashesOnOne)
    recorded = batch_run.record

    def record(*args: Any) -> None:  # on the recorder thread
        batch_run.log.info("recording (test)")
        recorded(*args)

    monkeypatch.setattr(batch_run, "record", record)
    version = create_version(max_batch_size=8, max_batch_wait_ms=300)
    ok, crash = [create_prediction_row(version, text=text) for text in ("ok", "crash")]
    done = run_together(runtime, version, [ok, crash])
    assert [p.status for p in done] == ["succeeded", "failed"]

    [split] = lines.with_message("a batch of 2 failed")
    assert split["prediction_ids"] == [ok, crash] and "prediction_id" not in split
    [culprit] = lines.with_message("the model failed on its own input")
    assert culprit["prediction_id"] == crash and culprit["prediction_ids"] == [ok, crash]
    assert "ValueError: the stand-in model crashed" in culprit["exception"]
    [recording] = lines.with_message("recording (test)")
    assert recording["prediction_ids"] == [ok, crash]

    # A batch of one names its prediction in `prediction_id`.
    run_together(runtime, version, [ok])  # finished already: the delivery is ignored
    [ignored] = lines.with_message("is not startable")
    assert ignored["prediction_id"] == ok and "prediction_ids" not in ignored
    assert log_format.context_fields() == {}  # nothing left behind in this thread


@pytest.mark.parametrize(
    ("ids", "fields"),
    [
        (["p-1", "p-2"], {"prediction_ids": ["p-1", "p-2"]}),
        (["p-1"], {"prediction_id": "p-1"}),
        ("p-1", {"prediction_id": "p-1"}),  # a message of an older API
    ],
)
def test_celery_lines_about_a_task_carry_its_id_and_prediction_ids(
    ids: Any, fields: dict[str, Any]
) -> None:
    task = run_prediction
    task_prerun.send(sender=task, task_id="task-1", task=task, args=[ids, "v-1"], kwargs={})
    assert log_format.context_fields() == {**fields, "task_id": "task-1"}
    task_postrun.send(sender=task, task_id="task-1", task=task, args=[ids, "v-1"], kwargs={})
    assert log_format.context_fields() == {}
