"""The Predictor protocol: set up once per process, predict many batches."""

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Predictor(Protocol):
    """A loaded model. `predict_batch` returns one output per input, in order; an input the
    model refuses gets a `PredictionError` in its place, so it fails without its batch.
    An output may hold `FileOutput`s anywhere (alone, in lists or dicts): the worker stores
    each one and puts its URL in its place. An output may be a numpy array (an embedding):
    written as JSON in C, float32 values in their shortest exact form. An output wrapped in
    `Metered` adds its own measurements to the prediction's metrics."""

    def __init__(self, weights: Path, device: str) -> None:
        """`weights`: the version's files on this machine. `device`: "cuda" (the process's one
        GPU: use fp16/bf16 there) or "cpu", chosen by the worker from the version's hardware."""

    def setup(self) -> None:
        """Load weights onto the device. Called once per process (again after an eviction)."""

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        """Run inputs that passed the version's input schema, in one pass where possible."""
        ...


@dataclass(frozen=True)
class FileOutput:
    """A file a model made (an image): stored by Quern, served to the owner as a URL."""

    data: bytes
    content_type: str  # e.g. image/png


@dataclass(frozen=True)
class Metered:
    """One input's output with what the model measured of it, which goes into the prediction's
    `metrics` beside `predict_time` and `batch_size` (which it cannot replace). Replicate's names
    for language models: `input_token_count` (the prompt's tokens, as the model read it) and
    `output_token_count` (the tokens it generated)."""

    output: Any
    metrics: Mapping[str, int | float]


class PredictionError(Exception):
    """The model refused or failed on an input: permanent; the prediction fails with this text."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU) allocation failure: the batch may fit once split."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


# Cooperative stopping (cancel, deadline, run timeout). The worker installs a check for the
# batch it is running; a model that works in steps (tokens, diffusion steps) calls
# `stop_requested()` between steps and stops the inputs flagged True. Models that run in one
# short pass may ignore it.
StopCheck = Callable[[], list[bool]]
_stop_check: ContextVar[StopCheck | None] = ContextVar("stop_check", default=None)


@contextmanager
def _installed(var: ContextVar[T | None], value: T) -> Iterator[None]:
    """`var` holds `value` inside the block (the worker's hooks for the batch it runs)."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def stop_check(check: StopCheck) -> AbstractContextManager[None]:
    return _installed(_stop_check, check)


def stop_requested() -> list[bool] | None:
    """One flag per input of the running batch (True: stop it now); None outside a worker."""
    check = _stop_check.get()
    return None if check is None else check()


# Streaming partial output (Server-Sent Events). The worker installs a sink for the batch it is
# running; a model that works in steps (tokens) may call `emit_outputs` after each step with the
# new chunk of each input that has one, keyed by the input's position in the `inputs` given to
# `predict_batch`, and the worker publishes them at once. Custom models can use it too. A model
# that emits for an input must emit all of it: the worker then publishes no whole output for
# that input (for text, the chunks concatenated must equal the output). A model that never
# emits has its whole output published once, when it is recorded.
OutputSink = Callable[[Mapping[int, Any]], None]
_output_sink: ContextVar[OutputSink | None] = ContextVar("output_sink", default=None)


def output_sink(sink: OutputSink) -> AbstractContextManager[None]:
    return _installed(_output_sink, sink)


def emit_outputs(chunks: Mapping[int, Any]) -> None:
    """Hand each input's new chunk (input index -> chunk) to the worker; one call per step
    keeps it one round trip for the whole batch. Does nothing outside a worker."""
    sink = _output_sink.get()
    if sink is not None and chunks:
        sink(chunks)
