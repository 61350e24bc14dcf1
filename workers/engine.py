"""Continuous batching: a text-generation version scheduled per token, not per batch.

A version whose `batching` is "continuous" gets an engine in place of its batcher (the same
`submit(id) -> Future`, so the Celery task is unchanged). Its thread loops: take the delivered
ids there is room for (the version's `max_batch_size` running at most), claim them in one
statement, add them to the running batch, then one step: one forward pass that prefills the
newcomers and gives every other row its next token (models/continuous.py). After each step,
in one Redis round trip for all rows, the new chunks go out as events (SSE and progress
webhooks as with static batching); rows flagged canceled, lost, past their deadline or run
timeout stop there; and every row that finished is handed to the recorder at once, so a
prediction is recorded when it ends, not when the slowest of its batch does. Claims, leases,
heartbeats, fencing and retries are the static path's own (workers/batch_run.py,
workers/recording.py). Out of memory makes the engine admit fewer rows for a while (the newest
running ones retry later as a transient failure); an input that crashes the model fails alone.
"""

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common import log_format
from db.repositories import predictions
from db.repositories.predictions import Claim
from db.session import session_scope
from db.tables import ModelVersion
from models.base import Predictor, is_out_of_memory
from models.continuous import Row, StepBatch, new_row
from workers import metrics
from workers.batch_run import READABLE, describe, hand_over
from workers.dynamic_batcher import Pending
from workers.recording import Outcome

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

# Steps without running out of memory after which one more row may run (up to the version's
# max_batch_size again): a spike lowers the capacity for a while, not for good.
CALM_STEPS = 256


@dataclass(eq=False)
class Running:
    """A claimed prediction in the engine: its row, once admitted, and who waits for it."""

    claim: Claim
    waiting: list[Pending[str]]
    notes: list[str]
    row: Row | None = None
    started: float = field(default_factory=time.perf_counter)
    peak: int = 0  # the most rows it ran with
    streamed: bool = False


class Engine:
    """One per continuous version and worker process; its thread runs every step."""

    def __init__(self, runtime: "WorkerRuntime", version: ModelVersion) -> None:
        self.runtime = runtime
        self.version = version
        self.model = runtime.model_ref(version.id)
        self.capacity = version.max_batch_size  # lowered by out of memory
        self._calm_steps = 0  # since the last out of memory: the capacity grows back slowly
        self._queue: queue.SimpleQueue[Pending[str]] = queue.SimpleQueue()
        self._running: list[Running] = []
        self._cut: set[str] = set()  # lost a chunk: send no more, so the client has a prefix
        self._predictor: Predictor | None = None
        self._batch: StepBatch | None = None
        self._thread = threading.Thread(target=self._run, name=f"engine-{version.id}", daemon=True)
        self._thread.start()

    def submit(self, item: str) -> Future[None]:
        pending: Pending[str] = Pending(item)
        self._queue.put(pending)
        return pending.future

    def _run(self) -> None:
        while True:
            try:
                self._admit(block=not self._running)
                self._step()
            except BaseException as exc:  # the thread must outlive any one step
                log.exception("the generation engine of %s failed", self.version.id)
                self._finish([(run, Outcome(error=describe(exc))) for run in self._running])
                self._batch = None
            self._gauges()

    # --- admission --------------------------------------------------------------------------

    def _admit(self, block: bool) -> None:
        """Claim and prefill what was delivered, up to the free slots."""
        taken: list[Pending[str]] = []
        free = self.capacity - len(self._running)
        if block:
            taken.append(self._queue.get())
        while len(taken) < free:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not taken:
            return
        ids = list(dict.fromkeys(pending.item for pending in taken))
        try:
            with log_format.predictions_context(ids), session_scope() as session:
                claims = predictions.claim(session, ids=ids, lease_s=self.runtime.settings.lease_s)
        except Exception as exc:  # the database is out: the tasks retry their messages
            log.warning("could not claim %d predictions: %s", len(ids), exc)
            for pending in taken:
                pending.future.set_exception(exc)
            return
        claimed = {claim.id for claim in claims}
        for pending in taken:
            if pending.item not in claimed:
                log.info("prediction %s is not startable; delivery ignored", pending.item)
                pending.future.set_result(None)
        if not claims:
            return
        self.runtime.webhook_progress.watch(claims)
        self.runtime.leases.add(claims, self.version.run_timeout_s)
        newcomers = [self._running_for(claim, taken) for claim in claims]
        try:
            predictor, notes = self._predictor_for_admission()
        except Exception as exc:
            if not isinstance(exc, READABLE):
                log.exception("could not load version %s", self.version.id)
            self._finish([(r, Outcome(error=describe(exc), transient=is_out_of_memory(exc)))
                          for r in newcomers])  # fmt: skip
            return
        refused = []
        for run in newcomers:
            run.notes = notes
            try:
                run.row = new_row(predictor, run.claim.input)
            except Exception as exc:
                refused.append((run, Outcome(error=describe(exc))))
        self._finish(refused)
        joining = [run for run in newcomers if run.row is not None]
        assert self._batch is not None
        self._batch.admit([run.row for run in joining if run.row is not None])
        self._running += joining  # prefilled by the next step, with the others' next tokens

    def _running_for(self, claim: Claim, taken: list[Pending[str]]) -> Running:
        return Running(claim, [p for p in taken if p.item == claim.id], [])

    def _predictor_for_admission(self) -> tuple[Any, list[str]]:
        """The loaded model; while rows run, theirs (an eviction cannot swap it under them)."""
        if self._batch is not None and self._batch.rows:
            return self._predictor, []
        loaded, just_loaded = self.runtime.get_predictor(self.version)
        predictor: Any = loaded.predictor
        if self._batch is None or predictor is not self._predictor:
            self._predictor, self._batch = predictor, StepBatch(predictor.model)
        notes = [f"Loaded {self.version.model_type} model in {loaded.load_seconds:.2f}s"]
        return predictor, notes if just_loaded else []

    # --- steps ------------------------------------------------------------------------------

    def _step(self) -> None:
        if not self._running or self._batch is None:
            return
        try:
            with self.runtime.compute_lock:
                failed = self._batch.step()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._shed(exc)
            return
        if failed:
            self._finish([(run, self._failure(run, failed[run.row])) for run in self._running
                          if run.row in failed])  # fmt: skip
        self._calm_steps += 1
        if self._calm_steps >= CALM_STEPS and self.capacity < self.version.max_batch_size:
            self.capacity, self._calm_steps = self.capacity + 1, 0
        metrics.GENERATED_TOKENS.labels(self.model).inc(len(self._running))
        self._after_step()

    def _shed(self, exc: BaseException) -> None:
        """Out of memory in a step: keep half the rows, the newest retry later."""
        self.capacity, self._calm_steps = max(1, len(self._running) // 2), 0
        log.warning("out of memory with %d rows: at most %d run together now",
                    len(self._running), self.capacity)  # fmt: skip
        shed = self._running[self.capacity :]
        self._finish([(run, Outcome(error=describe(exc), transient=True)) for run in shed])

    def _after_step(self) -> None:
        """Stream the new chunks, then finish the rows that are done or must stop."""
        for run in self._running:
            run.peak = max(run.peak, len(self._running))
        stop = self.runtime.leases.stop_reason
        ended = [run for run in self._running if run.row is not None
                 and (run.row.done or stop(run.claim) is not None)]  # fmt: skip
        for run in ended:
            assert run.row is not None
            run.row.close()
        self._publish({run: run.row.take() for run in self._running if run.row is not None})
        self._finish([(run, self._output(run)) for run in ended])

    def _output(self, run: Running) -> Outcome:
        assert run.row is not None
        text, count = run.row.output()
        return Outcome(
            output=text,
            predict_time=time.perf_counter() - run.started,
            batch_size=run.peak,
            streamed=run.streamed,
            measured={"input_token_count": len(run.row.prompt), "output_token_count": count},
        )

    def _failure(self, run: Running, exc: BaseException) -> Outcome:
        transient = is_out_of_memory(exc)
        if not isinstance(exc, READABLE) and not transient:
            log.error("the model failed on its own input", exc_info=exc,
                      extra={"prediction_id": run.claim.id})  # fmt: skip
        elapsed = time.perf_counter() - run.started
        return Outcome(error=describe(exc), transient=transient, predict_time=elapsed)

    # --- side effects -----------------------------------------------------------------------

    def _publish(self, chunks: dict[Running, str]) -> None:
        """One round trip for every row's new chunk (as workers/batch_run.py publishes)."""
        chunks = {run: chunk for run, chunk in chunks.items() if chunk}
        if not chunks:
            return
        for run in chunks:
            run.streamed = True
        self.runtime.webhook_progress.output_chunks({r.claim.id: c for r, c in chunks.items()})
        sending = [run for run in chunks if run.claim.id not in self._cut]
        events = [(r.claim.id, r.claim.attempts, "output", json.dumps(chunks[r])) for r in sending]
        if not self.runtime.events.publish_many(events):
            self._cut.update(run.claim.id for run in sending)

    def _finish(self, ended: Iterable[tuple[Running, Outcome]]) -> None:
        """Out of the batch and to the recorder, those with the same notes in one write."""
        groups: dict[tuple[str, ...], list[tuple[Running, Outcome]]] = {}
        for run, outcome in ended:
            groups.setdefault(tuple(run.notes), []).append((run, outcome))
        if not groups:
            return
        done = [run for group in groups.values() for run, _ in group]
        rows = [run.row for run in done if run.row is not None]
        if self._batch is not None:
            self._batch.remove(rows)
        self._running = [run for run in self._running if run not in done]
        for run in done:
            self._cut.discard(run.claim.id)
        for notes, group in groups.items():
            claims = [run.claim for run, _ in group]
            waiting = [pending for run, _ in group for pending in run.waiting]
            with log_format.predictions_context([claim.id for claim in claims]):
                hand_over(self.runtime, self.version, claims, [o for _, o in group],
                          list(notes), waiting)  # fmt: skip

    def _gauges(self) -> None:
        metrics.RUNNING_SEQUENCES.labels(self.model).set(len(self._running))
        metrics.WAITING_SEQUENCES.labels(self.model).set(self._queue.qsize())
