"""Custom predictors as a user would write them: nothing from Quern but the protocol's shape.
The live worker imports them by class path (`tests.support.custom_predictors:Reverse`)."""

from pathlib import Path
from typing import Any


class Reverse:
    """Reverses each text; says which device it was given and how big its batch was."""

    def __init__(self, weights: Path, device: str) -> None:
        self.device = device
        self.ready = False

    def setup(self) -> None:
        self.ready = True

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        assert self.ready, "predict_batch before setup"
        return [
            {"text": item["text"][::-1], "device": self.device, "batch": len(inputs)}
            for item in inputs
        ]


class Sized:
    """Holds nothing but says it holds `memory_bytes()`: for the model cache's budget."""

    def __init__(self, weights: Path, device: str) -> None:
        self.weights = weights

    def setup(self) -> None: ...

    def memory_bytes(self) -> int:
        return 400 * 2**20

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        return [str(self.weights) for _ in inputs]


class Digest:
    """Reads the file it is given (a path, as the worker hands file inputs over): its size,
    SHA-256 and extension."""

    def __init__(self, weights: Path, device: str) -> None: ...

    def setup(self) -> None: ...

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        import hashlib

        return [
            {
                "size": item["file"].stat().st_size,
                "sha256": hashlib.sha256(item["file"].read_bytes()).hexdigest(),
                "suffix": item["file"].suffix,
            }
            for item in inputs
        ]
