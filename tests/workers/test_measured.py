"""What a model measures of each input (models.base.Metered) lands in the prediction's
metrics, beside the worker's own, and the prediction object shows the token counts."""

from typing import Any

import numpy as np

from common.prediction_object import prediction_object
from models.base import Metered
from tests.support.helpers import create_prediction_row, create_version
from tests.workers.stubs import Recording, StandInRuntime, run_together


class CountsTokens(Recording):
    def embed(self, text: str) -> Any:
        measured = {
            "input_token_count": np.int64(len(text)),  # numpy numbers are JSON numbers too
            "output_token_count": 2,
            "tokens_per_second": np.float32(1.5),
            "predict_time": 1e9,  # the worker's own: never replaced
            "nan": float("nan"),  # not a JSON number: left out
            "flag": True,  # not a measurement: left out
            "label": "x",  # not a number: left out
        }
        return Metered(super().embed(text), measured)


def test_a_models_measurements_join_the_workers_metrics(runtime: StandInRuntime) -> None:
    runtime.use(CountsTokens)
    version = create_version(max_batch_size=4, max_batch_wait_ms=100)
    done = run_together(runtime, version, [create_prediction_row(version, text=t) for t in "ab"])
    for prediction in done:
        assert prediction.status == "succeeded" and prediction.output == [1.0]
        metrics = prediction.metrics
        assert metrics["input_token_count"] == 1 and metrics["output_token_count"] == 2
        assert metrics["tokens_per_second"] == 1.5 and metrics["predict_time"] < 60
        assert metrics["batch_size"] == 2
        assert not {"nan", "flag", "label"} & metrics.keys()
        shown = prediction_object(prediction, "quern/x", "http://testserver")["metrics"]
        assert (shown["input_token_count"], shown["output_token_count"]) == (1, 2)


def test_a_model_that_measures_nothing_shows_no_token_counts(runtime: StandInRuntime) -> None:
    runtime.use(Recording)
    version = create_version(max_batch_size=1, max_batch_wait_ms=0)
    (done,) = run_together(runtime, version, [create_prediction_row(version)])
    shown = prediction_object(done, "quern/x", "http://testserver")
    assert shown["metrics"]["input_token_count"] is None and shown["source"] == "api"
