"""The Predictor protocol: set up once per process, predict many batches."""

from pathlib import Path
from typing import Any, Protocol


class Predictor(Protocol):
    """A loaded model. `predict_batch` returns one output per input, in order."""

    def __init__(self, weights: Path) -> None: ...

    def setup(self) -> None:
        """Load weights and move them to the device. Called once per process."""

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        """Run inputs that passed the version's input schema, in one pass where possible."""
        ...


class PredictionError(Exception):
    """The model refused or failed on an input: permanent; the prediction fails with this text."""


def pick_device() -> str:
    """CUDA when this process can see a GPU, else CPU. Touches CUDA only when called."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
