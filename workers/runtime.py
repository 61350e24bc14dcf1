"""A worker process's runtime: everything the process holds, in one object built at its start.

The model versions it has seen and the models it holds, its batchers, the leases and cancel
flags of what it runs, the recorder, the event publisher and the webhook progress throttle; and
the background threads (lease heartbeat, cancel listener, sweeper, webhook dispatcher), which
start and stop with it. Batches get it passed down; Celery tasks, which cannot be handed it,
find it with `get_runtime()`. Models load lazily in the process that predicts (never in a
forking parent), behind a lock, so it works in the threads pool the workers use (where
`worker_process_init` never fires).
"""

import logging
import threading
import time
from collections.abc import Callable, Set
from typing import TYPE_CHECKING, Any

from celery import Celery

from common import log_format
from common.contract import WEBHOOKS_QUEUE
from db.repositories import models
from db.session import session_scope
from db.tables import Batching, Hardware, ModelVersion
from models import registry, weights
from models.base import PredictionError
from workers import container, metrics, sweeper
from workers.batch_run import run_batch
from workers.dynamic_batcher import Batcher
from workers.events import EventPublisher
from workers.leases import Leases
from workers.model_cache import CachedModel, ModelCache, default_budget_bytes, tensor_bytes
from workers.settings import WorkerSettings
from workers.webhooks import dispatcher
from workers.webhooks.progress import ProgressThrottle

if TYPE_CHECKING:  # imports torch: only where a continuous version runs
    from workers.engine import Engine

log = logging.getLogger(__name__)


class NoGpu(PredictionError):
    """A `gpu` version reached a worker without CUDA (a misrouted message)."""


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


class WorkerRuntime:
    """One per worker process, built at its start; a test builds its own."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.leases = Leases()
        self.events = EventPublisher(settings.redis_url)
        self.webhook_progress = ProgressThrottle()
        # One thread: the next batch computes while the last one is written. Its lines carry
        # the ids of the batch that submitted the work.
        self.recorder = log_format.ContextThreadPoolExecutor(
            max_workers=1, thread_name_prefix="recorder"
        )
        # One forward pass at a time per process: two models computing at once would only
        # fight over the same cores (or GPU) and make both slower.
        self.compute_lock = threading.Lock()
        self._versions: dict[str, tuple[ModelVersion, str]] = {}  # id -> (version, owner/name)
        self._models = ModelCache(self._budget_bytes)
        self._batchers: dict[str, Batcher[str] | Engine] = {}
        self._batchers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, app: Celery, queues: Set[str]) -> None:
        """Lease heartbeat, cancel listener and sweeper in a process that runs predictions; the
        webhook dispatcher in one that delivers webhooks. `app` sends what they publish."""
        if queues - {WEBHOOKS_QUEUE}:
            self.start_leases()
            self._spawn("sweeper", sweeper.run, app, self.settings, self._stopping)
        if WEBHOOKS_QUEUE in queues:
            self._spawn("webhook-dispatcher", dispatcher.run, app, self.settings, self._stopping)

    def start_leases(self) -> None:
        """The lease heartbeat and the cancel listener, which keep running predictions alive
        and stoppable."""
        self._spawn("heartbeat", self.leases.heartbeat, self.settings.lease_s, self._stopping)
        self._spawn("listen", self.leases.listen, self._stopping)

    def stop(self) -> None:
        """End the background threads and the writers. A worker process just exits (its
        threads are daemons); tests stop each runtime they build."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.recorder.shutdown()
        self.webhook_progress.close()
        self.events.close()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def batcher_for(self, version_id: str) -> "Batcher[str] | Engine":
        """What runs the predictions of `version_id`: its batcher, sized by the version's
        limits, or its continuous-batching engine (workers/engine.py)."""
        batcher = self._batchers.get(version_id)
        if batcher is None:
            version = self.get_version(version_id)
            with self._batchers_lock:
                batcher = self._batchers.get(version_id)
                if batcher is None:
                    batcher = self._batchers[version_id] = self._new_batcher(version)
        return batcher

    def _new_batcher(self, version: ModelVersion) -> "Batcher[str] | Engine":
        if version.batching == Batching.CONTINUOUS:
            from workers.engine import Engine  # torch, in the process that runs the model

            return Engine(self, version)
        return Batcher(
            version.id,
            lambda batch: run_batch(self, version, batch),
            max_size=version.max_batch_size,
            max_wait_s=version.max_batch_wait_ms / 1000,
        )

    def get_version(self, version_id: str) -> ModelVersion:
        """Versions are immutable, so each is read once per process."""
        found = self._versions.get(version_id)
        if found is None:
            with session_scope() as session:
                found = models.get_version(session, id=version_id)
                if found is None:
                    raise LookupError(f"no model version {version_id}")
                session.expunge(found[0])
            self._versions[version_id] = found
        return found[0]

    def model_ref(self, version_id: str) -> str:
        """`owner/name` of a version seen by get_version: the `model` label of the metrics."""
        return self._versions[version_id][1]

    def get_predictor(self, version: ModelVersion) -> tuple[CachedModel, bool]:
        """The set-up predictor for `version`, and whether this call had to load it."""
        device = device_for(version.hardware)
        key = (version.model_type, version.predictor, version.weights, device)

        def load() -> CachedModel:
            if device == "cpu":
                container.fit_torch_threads()
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

        return self._models.get(key, device, load)

    def _budget_bytes(self, device: str) -> int:
        configured = self.settings.model_memory_mb
        return configured * 2**20 if configured else default_budget_bytes(device)


_installed: WorkerRuntime | None = None


def install(runtime: WorkerRuntime | None) -> None:
    """Make `runtime` the one get_runtime() returns: at worker start, or in a test."""
    global _installed
    _installed = runtime


def get_runtime() -> WorkerRuntime:
    """This process's runtime, for the Celery tasks (which cannot be handed one)."""
    if _installed is None:
        raise RuntimeError("no worker runtime: one is built at worker_init")
    return _installed
