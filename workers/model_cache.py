"""The models one worker process holds: least recently used first out, within a memory budget.

A model is keyed by what it loads (type, class, weights, device), not by version, so versions
that differ only in batching limits share one copy. Sizes are measured after loading (the
parameters and buffers of the torch modules a predictor holds, or its own `memory_bytes()`);
when the total exceeds the device's budget, the least recently used other models are dropped.
A batch still running on a dropped model keeps it alive until it ends. A model seen before
makes room before it loads again (its size is remembered); one that runs out of memory while
loading makes room by dropping every other model on its device, then tries once more.

Models load one at a time (two at once would need both in memory before either fits), but a
load holds only the load lock, not the lock on what is held: a model already loaded is served
at once while another loads, so one model's cold start does not stall the rest. Two callers
asking for the same missing model load it once: the second waits for the first's load and
takes its result (or, if that load failed, tries itself).
"""

import gc
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from models.base import is_out_of_memory
from workers import container, metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedModel:
    predictor: Any
    load_seconds: float
    size_bytes: int
    device: str


def tensor_bytes(obj: Any) -> int:
    """Bytes of parameters and buffers of the torch modules `obj` holds (diffusers pipelines
    through their components); a predictor may say it better with `memory_bytes()`."""
    own = getattr(obj, "memory_bytes", None)
    if callable(own):
        return int(own())
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    seen: set[int] = set()
    total = 0
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    for value in values:
        components = getattr(value, "components", None)
        modules = list(components.values()) if isinstance(components, dict) else [value]
        for module in modules:
            if not isinstance(module, torch.nn.Module):
                continue
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


def default_budget_bytes(device: str) -> int:
    """Half the memory on CPU (the container's limit, if lower than the machine's); 80% of the
    GPU's memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[1] * 0.8)
    return container.memory_bytes() // 2


class ModelCache:
    def __init__(self, budget_bytes: Callable[[str], int]) -> None:
        self._budget_bytes = budget_bytes
        self._models: OrderedDict[Hashable, CachedModel] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}  # of every model loaded once, evicted or not
        self._devices: set[str] = set()
        self._lock = threading.Lock()  # what is held; never held while a model loads
        self._load_lock = threading.Lock()  # one load at a time

    def get(
        self, key: Hashable, device: str, load: Callable[[], CachedModel]
    ) -> tuple[CachedModel, bool]:
        """The model under `key`, loading it onto `device` if absent; True when this call
        loaded it. A model already loaded is returned without waiting for any load. Loads
        are one at a time: two at once would need both in memory before either fits, so a
        missing model waits for the load in progress (which, for the same key, serves it)."""
        cached = self._hit(key)
        if cached is not None:
            return cached, False
        with self._load_lock:
            with self._lock:
                cached = self._hit_locked(key)  # loaded by the call this one waited for
                if cached is not None:
                    return cached, False
                evicted = self._make_room(device, self._sizes.get(key, 0))
            self._free(device, evicted)
            try:
                cached = load()
            except Exception as exc:
                with self._lock:
                    others = self._on(device)
                if not is_out_of_memory(exc) or not others:
                    raise
                log.warning(
                    "out of memory loading %s; dropping the other models on %s", key, device
                )
                with self._lock:
                    evicted = self._make_room(device, self._budget_bytes(device))
                self._free(device, evicted)
                cached = load()
            with self._lock:
                self._models[key] = cached
                self._sizes[key] = cached.size_bytes
                self._devices.add(device)
                evicted = self._make_room(device, 0, keep=key)
                self._observe()
            self._free(device, evicted)
            return cached, True

    def keys(self) -> list[Hashable]:
        """Least recently used first."""
        with self._lock:
            return list(self._models)

    def _hit(self, key: Hashable) -> CachedModel | None:
        with self._lock:
            return self._hit_locked(key)

    def _hit_locked(self, key: Hashable) -> CachedModel | None:
        """The model under `key`, now the most recently used; None when it is not held."""
        cached = self._models.get(key)
        if cached is not None:
            self._models.move_to_end(key)
        return cached

    def _on(self, device: str) -> list[Hashable]:
        """Keys of the models held on `device`, least recently used first."""
        return [key for key, model in self._models.items() if model.device == device]

    def _make_room(self, device: str, needed: int, keep: Hashable = None) -> bool:
        """Drop the least recently used models on `device` (but `keep`) until `needed` more
        bytes fit in its budget; True when any was dropped (then `_free`, outside the lock)."""
        budget = self._budget_bytes(device) - needed
        on_device = self._on(device)
        total = sum(self._models[key].size_bytes for key in on_device)
        evicted = False
        for key in on_device:
            if total <= budget:
                break
            if key == keep:
                continue
            dropped = self._models.pop(key)
            total -= dropped.size_bytes
            evicted = True
            metrics.MODEL_EVICTIONS.labels(device).inc()
            log.info(
                "evicted %s (%.0f MB) from %s: %.0f MB held, budget %.0f MB",
                key, dropped.size_bytes / 1e6, device, total / 1e6, budget / 1e6,
            )  # fmt: skip
        if total > budget:
            log.warning(
                "%s holds %.0f MB, over its budget of %.0f MB", device, total / 1e6, budget / 1e6
            )
        return evicted

    @staticmethod
    def _free(device: str, evicted: bool) -> None:
        """Return the memory of dropped models (slow: done outside the lock on what is held)."""
        if evicted:
            gc.collect()
            torch = sys.modules.get("torch")
            if device.startswith("cuda") and torch is not None:
                torch.cuda.empty_cache()

    def _observe(self) -> None:
        held = dict.fromkeys(self._devices, 0)
        for model in self._models.values():
            held[model.device] = held.get(model.device, 0) + model.size_bytes
        for device, size in held.items():
            metrics.MODEL_MEMORY_BYTES.labels(device).set(size)
