"""Per-process state of a worker: the model versions it has seen and the models it holds.

Models load lazily in the process that predicts (never in a forking parent), behind a lock,
so it works in the threads pool the workers use (where `worker_process_init` never fires).
"""

import logging
import threading
import time

from db.repositories import models
from db.session import session_scope
from db.tables import Hardware, ModelVersion
from models import registry, weights
from models.base import PredictionError
from workers import metrics
from workers.model_cache import CachedModel, ModelCache, default_budget_bytes, tensor_bytes
from workers.settings import get_worker_settings

log = logging.getLogger(__name__)


class NoGpu(PredictionError):
    """A `gpu` version reached a worker without CUDA (a misrouted message)."""


_versions: dict[str, tuple[ModelVersion, str]] = {}  # id -> (version, owner/name)
# One forward pass at a time per process: two models computing at once would only fight
# over the same cores (or GPU) and make both slower.
compute_lock = threading.Lock()


def get_version(version_id: str) -> ModelVersion:
    """Versions are immutable, so each is read once per process."""
    found = _versions.get(version_id)
    if found is None:
        with session_scope() as session:
            found = models.get_version(session, id=version_id)
            if found is None:
                raise LookupError(f"no model version {version_id}")
            session.expunge(found[0])
        _versions[version_id] = found
    return found[0]


def model_ref(version_id: str) -> str:
    """`owner/name` of a version seen by get_version: the `model` label of the metrics."""
    return _versions[version_id][1]


def device_for(hardware: str) -> str:
    """Where a version runs: `gpu` versions on this process's CUDA device (one GPU per worker
    process, chosen with CUDA_VISIBLE_DEVICES), everything else on the CPU. Touches CUDA only
    here, in the process that runs the model."""
    if hardware != Hardware.GPU:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise NoGpu("This version needs a GPU and this worker has none (CUDA is not available)")
    return "cuda"


def _budget_bytes(device: str) -> int:
    configured = get_worker_settings().model_memory_mb
    return configured * 2**20 if configured else default_budget_bytes(device)


_cache = ModelCache(_budget_bytes)


def get_predictor(version: ModelVersion) -> tuple[CachedModel, bool]:
    """The set-up predictor for `version`, and whether this call had to load it."""
    device = device_for(version.hardware)
    key = (version.model_type, version.predictor, version.weights, device)

    def load() -> CachedModel:
        started = time.perf_counter()
        predictor = registry.create(
            version.model_type, weights.resolve(version.weights), device, version.predictor
        )
        predictor.setup()
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(version.model_type).observe(seconds)
        size = tensor_bytes(predictor)
        log.info(
            "loaded %s version %s on %s in %.2fs (%.0f MB)",
            version.model_type, version.id, device, seconds, size / 1e6,
        )  # fmt: skip
        return CachedModel(predictor, seconds, size, device)

    return _cache.get(key, device, load)
