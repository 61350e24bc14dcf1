"""Stand-in predictors and a worker runtime that runs them, for real batches on real rows."""

from pathlib import Path
from typing import Any, TypeVar

from db.repositories import predictions
from db.session import session_scope
from db.tables import ModelVersion, Prediction
from workers.model_cache import CachedModel
from workers.runtime import WorkerRuntime


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


P = TypeVar("P", bound=Recording)


class StandInRuntime(WorkerRuntime):
    """A worker runtime whose every version runs one stand-in predictor, once `use` names it
    (until then, versions load their real models)."""

    stand_in: CachedModel | None = None

    def use(self, predictor_class: type[P]) -> P:
        predictor = predictor_class(Path("."))
        self.stand_in = CachedModel(predictor, 0.0, 0, "cpu")
        return predictor

    def get_predictor(self, version: ModelVersion) -> tuple[CachedModel, bool]:
        if self.stand_in is None:
            return super().get_predictor(version)
        return self.stand_in, False


def run_together(
    runtime: WorkerRuntime, version_id: str, prediction_ids: list[str]
) -> list[Prediction]:
    """Deliver every id at once, as a worker's task threads would, and wait for all of them."""
    futures = [runtime.batcher_for(version_id).submit(id) for id in prediction_ids]
    for future in futures:
        future.result(timeout=30)
    return [load(id) for id in prediction_ids]


def load(prediction_id: str) -> Prediction:
    with session_scope() as session:
        row = predictions.get(session, id=prediction_id)
    assert row is not None
    return row.prediction
