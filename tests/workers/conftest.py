"""Each test builds its own worker runtime, as a worker process does at start."""

from collections.abc import Iterator

import pytest

from tests.workers.stubs import StandInRuntime
from workers.runtime import install
from workers.settings import WorkerSettings, get_worker_settings


@pytest.fixture
def settings() -> WorkerSettings:
    """This test's own copy of the worker settings, to change at will."""
    return get_worker_settings().model_copy()


@pytest.fixture
def runtime(settings: WorkerSettings) -> Iterator[StandInRuntime]:
    """A runtime with `settings`, installed for the task functions and stopped afterwards."""
    built = StandInRuntime(settings)
    install(built)
    yield built
    install(None)
    built.stop()
