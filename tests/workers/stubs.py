"""Stand-in predictors and helpers for running real batches against real rows."""

from pathlib import Path
from typing import Any

import pytest

from db.repositories import predictions
from db.session import session_scope
from db.tables import Prediction
from workers import batches, runtime
from workers.model_cache import CachedModel


class Recording:
    """Embeds each text as [len(text)] and remembers the size of every batch it saw."""

    def __init__(self, weights: Path, device: str = "cpu") -> None:
        self.batches: list[list[str]] = []

    def setup(self) -> None: ...

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        texts = [item["text"] for item in inputs]
        self.batches.append(texts)
        return [self.embed(text) for text in texts]

    def embed(self, text: str) -> Any:
        return [float(len(text))]


def use(monkeypatch: pytest.MonkeyPatch, predictor_class: type[Recording]) -> Recording:
    predictor = predictor_class(Path("."))
    loaded = CachedModel(predictor, 0.0, 0, "cpu")
    monkeypatch.setattr(runtime, "get_predictor", lambda version: (loaded, False))
    return predictor


def run_together(version_id: str, prediction_ids: list[str]) -> list[Prediction]:
    """Deliver every id at once, as a worker's task threads would, and wait for all of them."""
    futures = [batches.batcher_for(version_id).submit(id) for id in prediction_ids]
    for future in futures:
        future.result(timeout=30)
    return [load(id) for id in prediction_ids]


def load(prediction_id: str) -> Prediction:
    with session_scope() as session:
        row = predictions.get(session, id=prediction_id)
    assert row is not None
    return row.prediction
