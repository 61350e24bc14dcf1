"""The per-process model cache: least recently used out, within the device's budget."""

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from db.repositories import models
from db.seed import SYSTEM_USER
from db.session import session_scope
from db.tables import ModelVersion
from tests.support.custom_predictors import Sized
from tests.support.helpers import new_username
from workers.model_cache import CachedModel, ModelCache, tensor_bytes
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings


def fake(size: int, device: str = "cpu") -> CachedModel:
    return CachedModel(object(), 0.0, size, device)


def test_the_least_recently_used_model_goes_when_the_budget_is_exceeded() -> None:
    cache = ModelCache(lambda device: 100)
    loads: list[str] = []

    def load(key: str, size: int) -> CachedModel:
        loads.append(key)
        return fake(size)

    def get(key: str, size: int) -> bool:
        return cache.get(key, "cpu", lambda: load(key, size))[1]

    assert get("a", 40) and get("b", 40)
    assert not get("a", 40)  # a is now the most recently used
    assert get("c", 40)  # 120 > 100: b goes, not a
    assert cache.keys() == ["a", "c"]
    assert get("b", 40)  # loaded again; a is the least recently used now
    assert cache.keys() == ["c", "b"] and loads == ["a", "b", "c", "b"]


def test_a_model_bigger_than_the_budget_is_still_served_alone() -> None:
    cache = ModelCache(lambda device: 100)
    cache.get("small", "cpu", lambda: fake(10))
    cache.get("huge", "cpu", lambda: fake(500))
    assert cache.keys() == ["huge"]


def test_each_device_has_its_own_budget() -> None:
    cache = ModelCache(lambda device: 100)
    cache.get("cpu", "cpu", lambda: fake(90, "cpu"))
    cache.get("gpu", "cuda", lambda: fake(90, "cuda"))
    assert cache.keys() == ["cpu", "gpu"]


def test_a_model_seen_before_makes_room_before_it_loads_again() -> None:
    cache = ModelCache(lambda device: 100)
    held_at_load: list[list[object]] = []

    def load(size: int) -> CachedModel:
        held_at_load.append(cache.keys())
        return fake(size)

    cache.get("a", "cpu", lambda: load(60))
    cache.get("b", "cpu", lambda: load(60))  # evicts a after loading: a's size was unknown
    cache.get("a", "cpu", lambda: load(60))  # a is known: b goes before a loads
    assert held_at_load == [[], ["a"], []] and cache.keys() == ["a"]


def test_out_of_memory_while_loading_drops_the_others_and_tries_again() -> None:
    cache = ModelCache(lambda device: 1000)
    cache.get("a", "cuda", lambda: fake(10, "cuda"))
    cache.get("cpu", "cpu", lambda: fake(10, "cpu"))
    tries = []

    def load() -> CachedModel:
        tries.append(cache.keys())
        if "a" in cache.keys():  # noqa: SIM118 - the cache's own method
            raise MemoryError("no room while a is held")
        return fake(10, "cuda")

    cache.get("b", "cuda", load)
    assert tries == [["a", "cpu"], ["cpu"]] and cache.keys() == ["cpu", "b"]
    with pytest.raises(ValueError):  # other failures are not memory: no second try
        cache.get("c", "cuda", lambda: (_ for _ in ()).throw(ValueError("broken")))
    assert cache.keys() == ["cpu", "b"]


class HeldLoad:
    """A load that starts, then waits for `release`: a slow cold start, held open."""

    def __init__(self, size: int = 10) -> None:
        self.size = size
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> CachedModel:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10), "the held load was never released"
        return fake(self.size)


def in_thread(
    call: Callable[[], tuple[CachedModel, bool]],
) -> tuple[threading.Thread, list[tuple[CachedModel, bool]]]:
    """`call` started on a thread of its own, and the list its answer goes in."""
    result: list[tuple[CachedModel, bool]] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    return thread, result


def test_a_loaded_model_is_served_while_another_loads() -> None:
    cache = ModelCache(lambda device: 1000)
    a, _ = cache.get("a", "cpu", lambda: fake(10))
    slow = HeldLoad()
    loading, loaded = in_thread(lambda: cache.get("b", "cpu", slow))
    try:
        assert slow.started.wait(5)
        asking, answer = in_thread(lambda: cache.get("a", "cpu", lambda: fake(10)))
        asking.join(2)
        assert answer == [(a, False)]  # not held up by b's load
        assert cache.keys() == ["a"]  # b is not held until it has loaded
    finally:
        slow.release.set()
    loading.join(5)
    assert loaded[0][1] and cache.keys() == ["a", "b"]


def test_two_calls_for_the_same_missing_model_load_it_once() -> None:
    cache = ModelCache(lambda device: 1000)
    slow = HeldLoad()
    first, first_got = in_thread(lambda: cache.get("a", "cpu", slow))
    try:
        assert slow.started.wait(5)
        second, second_got = in_thread(lambda: cache.get("a", "cpu", slow))
        second.join(0.2)
        assert second.is_alive()  # waiting for the first call's load, not loading its own
    finally:
        slow.release.set()
    first.join(5)
    second.join(5)
    assert slow.calls == 1
    (model, loaded), (again, loaded_again) = first_got[0], second_got[0]
    assert again is model and loaded and not loaded_again


def test_a_missing_model_waits_for_the_load_in_progress() -> None:
    """Loads are one at a time: two at once would need both in memory before either fits."""
    cache = ModelCache(lambda device: 1000)
    slow = HeldLoad()
    held_at_load: list[list[object]] = []

    def load_c() -> CachedModel:
        held_at_load.append(cache.keys())
        return fake(10)

    loading, _ = in_thread(lambda: cache.get("b", "cpu", slow))
    try:
        assert slow.started.wait(5)
        waiting, _ = in_thread(lambda: cache.get("c", "cpu", load_c))
        waiting.join(0.2)
        assert waiting.is_alive() and held_at_load == []
    finally:
        slow.release.set()
    loading.join(5)
    waiting.join(5)
    assert held_at_load == [["b"]] and cache.keys() == ["b", "c"]


def test_tensor_bytes_counts_parameters_and_buffers_once() -> None:
    class Holder:
        def __init__(self) -> None:
            self.model = torch.nn.BatchNorm1d(10)  # 20 parameters, 21 buffer elements
            self.alias = self.model

    assert tensor_bytes(Holder()) == 20 * 4 + 20 * 4 + 8
    assert tensor_bytes(Sized(Path("."), "cpu")) == 400 * 2**20


def version_of(predictor: str, weights: str) -> ModelVersion:
    with session_scope() as session:
        owner = models.get(session, owner=SYSTEM_USER, name="all-minilm-l6-v2")
        assert owner is not None
        model = models.create(session, owner_id=owner.model.owner_id, name=new_username())
        version = models.create_version(
            session, model_id=model.id, model_type="custom", predictor=predictor,
            weights=weights, input_schema={"type": "object"}, hardware="cpu",
            max_batch_size=1, max_batch_wait_ms=0, run_timeout_s=10,
        )  # fmt: skip
        session.expunge(version)
    return version


def test_the_worker_runtime_evicts_within_its_configured_budget(
    runtime: WorkerRuntime, settings: WorkerSettings
) -> None:
    """Three 400 MB models under a 1000 MB budget: the third load drops the first."""
    settings.model_memory_mb = 1000
    first, second, third = (
        version_of("tests.support.custom_predictors:Sized", f"package://tests/{folder}")
        for folder in ("workers", "api", "db")
    )
    assert runtime.get_predictor(first)[1] and runtime.get_predictor(second)[1]
    assert not runtime.get_predictor(first)[1]  # cached, and now the most recently used
    assert runtime.get_predictor(third)[1]
    assert not runtime.get_predictor(first)[1]
    assert runtime.get_predictor(second)[1]  # it was evicted: loaded again


def test_versions_that_differ_only_in_batching_share_one_loaded_model(
    runtime: WorkerRuntime,
) -> None:
    one = version_of("tests.support.custom_predictors:Reverse", "package://tests")
    two = version_of("tests.support.custom_predictors:Reverse", "package://tests")
    loaded, _ = runtime.get_predictor(one)
    again, just_loaded = runtime.get_predictor(two)
    assert again is loaded and not just_loaded
