"""The prediction task's own decisions, with a tiny stand-in predictor per failure mode."""

from pathlib import Path
from typing import Any

import pytest

from db.repositories import predictions
from db.session import session_scope
from tests.helpers import create_prediction_row
from workers import runtime
from workers.tasks.predictions import run_prediction


class ReturnsNaN:
    def __init__(self, weights: Path) -> None: ...

    def setup(self) -> None: ...

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        return [[1.0, float("nan")] for _ in inputs]


class Raises:
    def __init__(self, weights: Path) -> None: ...

    def setup(self) -> None: ...

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        raise ValueError("bad\x00thing")


@pytest.fixture
def prediction_id() -> str:
    return create_prediction_row()


def run_with(predictor: Any, prediction_id: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    loaded = runtime.LoadedModel(predictor(Path(".")), 0.0)
    monkeypatch.setattr(runtime, "get_predictor", lambda version: (loaded, False))
    run_prediction.run(prediction_id)
    with session_scope() as session:
        row = predictions.get(session, id=prediction_id)
    assert row is not None
    return row.prediction


def test_an_unstorable_output_fails_the_prediction_instead_of_leaving_it_processing(
    prediction_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prediction = run_with(ReturnsNaN, prediction_id, monkeypatch)
    assert prediction.status == "failed"
    assert "output[1]" in prediction.error and "NaN" in prediction.error


def test_a_model_exception_fails_at_once_with_a_readable_error(
    prediction_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prediction = run_with(Raises, prediction_id, monkeypatch)
    assert prediction.status == "failed" and prediction.completed_at is not None
    assert prediction.error.startswith("ValueError: bad")
