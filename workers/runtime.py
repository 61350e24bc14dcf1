"""Per-process state of a worker: the model versions it has seen and the models it has loaded.

Models load lazily in the process that predicts (never in a forking parent), behind a lock,
so it works in the threads pool the workers use (where `worker_process_init` never fires).
"""

import logging
import threading
import time
from dataclasses import dataclass

from db.repositories import models
from db.session import session_scope
from db.tables import ModelVersion
from models import registry, weights
from models.base import Predictor
from workers import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    load_seconds: float


_versions: dict[str, ModelVersion] = {}
_refs: dict[str, str] = {}
_loaded: dict[str, LoadedModel] = {}
_lock = threading.Lock()
# One forward pass at a time per process: two models computing at once would only fight
# over the same cores (or GPU) and make both slower.
compute_lock = threading.Lock()


def get_version(version_id: str) -> ModelVersion:
    """Versions are immutable, so each is read once per process."""
    version = _versions.get(version_id)
    if version is None:
        with session_scope() as session:
            found = models.get_version(session, id=version_id)
            if found is None:
                raise LookupError(f"no model version {version_id}")
            version, _refs[version_id] = found
            session.expunge(version)
        _versions[version_id] = version
    return version


def model_ref(version_id: str) -> str:
    """`owner/name` of a version seen by get_version: the `model` label of the metrics."""
    return _refs.get(version_id, "unknown")


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
        metrics.MODEL_LOAD_SECONDS.labels(version.model_type).observe(loaded.load_seconds)
        log.info(
            "loaded %s version %s in %.2fs", version.model_type, version.id, loaded.load_seconds
        )
        return loaded, True
