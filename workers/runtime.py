"""Per-process model cache: each version is loaded once per worker process and reused.

Loading happens lazily in the process that predicts (never in a forking parent), behind a
lock, so it works in the solo, threads and prefork pools alike.
"""

import logging
import threading
import time
from dataclasses import dataclass

from db.tables import ModelVersion
from models import registry, weights
from models.base import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    load_seconds: float


_loaded: dict[str, LoadedModel] = {}
_lock = threading.Lock()


def get_predictor(version: ModelVersion) -> tuple[LoadedModel, bool]:
    """The set-up predictor for `version`, and whether this call had to load it."""
    with _lock:
        if version.id in _loaded:
            return _loaded[version.id], False
        started = time.perf_counter()
        predictor = registry.create(version.model_type, weights.resolve(version.weights))
        predictor.setup()
        loaded = LoadedModel(predictor, time.perf_counter() - started)
        _loaded[version.id] = loaded
        log.info(
            "loaded %s version %s in %.2fs", version.model_type, version.id, loaded.load_seconds
        )
        return loaded, True
