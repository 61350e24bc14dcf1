"""`make bench`: Quern against the bare model, batched against unbatched, in one run.

Starts the real stack (PostgreSQL and Redis, embedded unless DATABASE_URL/REDIS_URL are set;
the API; one worker), then measures, on this machine and in this order:
  1. the bare models in this process at batch sizes 1, 8, 16, 32 (the ceiling, measured
     again right before and right after Quern's batched run: the ratio is against those);
  2. the accept path: predictions created per second with no worker running;
  3. the low-load overhead: end-to-end latency minus model time, one prediction in flight;
  4. Quern with batching and with batching off (max batch size 1), for both workloads;
  5. text generation of mixed lengths arriving over time, static against continuous
     batching (bench/mixed.py);
  6. where the time goes: a py-spy profile of the API and the worker under load.
The load comes from wrk (bench/load.py), a native client whose own CPU is reported, each
connection posting with `Prefer: wait`: a closed loop. Server-side figures (batch sizes,
overhead) come from the rows. Results are printed and written to bench/RESULTS.md.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import load, mixed, profile
from db.repositories.predictions import STATUS_CHANNEL
from scripts.local_stack import log, run_step, start_postgres, start_redis
from tests.support.processes import free_port, http_ok, start, stop, wait_until
from workers.container import share_cores

ROOT = Path(__file__).resolve().parent.parent

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
TOPICS = ["rivers", "bread", "trains", "owls", "glass", "music", "rain", "chess", "salt", "maps"]


@dataclass(frozen=True)
class Workload:
    name: str
    builtin: str  # the seeded model whose weights and schema the bench versions copy
    inputs: list[dict[str, Any]]
    in_flight: int
    max_batch_size: int
    max_batch_wait_ms: int
    bare_batch_sizes: tuple[int, ...]
    # Rates need no full pass: bare runs other than the ceiling (bare model at batch
    # `in_flight`) use the first `sample` inputs, so the bench takes minutes, not an hour.
    sample: int
    seconds: float  # how long the load runs against Quern batched (unbatched: half)


def workloads(scale: float) -> list[Workload]:
    sentences = [f"Sentence {n} is a short remark about {TOPICS[n % 10]}." for n in range(1000)]
    prompts = [f"Write one sentence about {TOPICS[n % 10]} (note {n})." for n in range(200)]
    return [
        Workload(
            "embeddings",
            "all-minilm-l6-v2",
            [{"text": s} for s in sentences[: int(1000 * scale)]],
            in_flight=32,
            max_batch_size=32,
            max_batch_wait_ms=5,  # as the built-in version
            bare_batch_sizes=(1, 8, 32),
            sample=int(300 * scale) or 1,
            seconds=max(4.0, 30 * scale),
        ),
        Workload(
            "text-generation",
            "smollm2-135m-instruct",
            [{"prompt": p, "max_new_tokens": 16, "temperature": 0, "top_p": 1} for p in prompts][
                : int(200 * scale)
            ],
            in_flight=16,
            max_batch_size=16,
            max_batch_wait_ms=250,  # as the built-in version
            bare_batch_sizes=(1, 8, 16, 32),
            sample=int(48 * scale) or 1,
            seconds=max(8.0, 40 * scale),
        ),
    ]


@dataclass
class Run:
    """Timings of one measured run."""

    label: str
    count: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)
    # Server side: created_at -> completed_at minus predict_time (no HTTP, no client).
    server_overheads: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per component
    percentiles: dict[int, float] = field(default_factory=dict)  # seconds, from wrk
    errors: int = 0
    cache_hits: int = 0  # predictions answered from the result cache

    @property
    def throughput(self) -> float:
        return self.count / self.seconds

    def latency(self, q: int) -> float:
        return self.percentiles.get(q) or percentile(self.latencies, q)

    def cpu_ms(self, component: str) -> float:
        return self.cpu.get(component, 0.0) / self.count * 1000


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- where the CPU goes ------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def machine_cpu() -> float:
    """CPU seconds spent by everything on the machine, idle and I/O wait excluded."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICK


# --- 1. the bare model --------------------------------------------------------------------


class BareModel:
    """The model alone in this process, kept loaded for the whole bench: its ceiling (batch
    `in_flight`) is measured right before and right after Quern's batched run, so that the
    ratio compares runs a minute apart. A shared machine's speed drifts by a third within
    minutes; a ceiling measured before the stack started would mostly measure that drift."""

    def __init__(self, workload: Workload, weights_ref: str, model_type: str) -> None:
        from models import registry, weights

        self.workload = workload
        self.predictor = registry.create(model_type, weights.resolve(weights_ref), "cpu")
        self.predictor.setup()
        self.predictor.predict_batch(workload.inputs[:2])  # warm-up

    def sizes(self) -> list[Run]:
        """Every batch size but the ceiling's, on the first `sample` inputs."""
        sizes = [size for size in self.workload.bare_batch_sizes if size != self.workload.in_flight]
        return [self.run(size, f"bare, batch {size}") for size in sizes]

    def ceiling(self, when: str) -> Run:
        """Batch `in_flight`, every input."""
        return self.run(self.workload.in_flight, f"bare, batch {self.workload.in_flight}, {when}")

    def at_batch_of(self, quern: Run) -> Run | None:
        """The model at the batch size Quern's batches had on average (every input, as the
        ceiling), unless that is the ceiling's: what the model itself cost inside Quern."""
        size = round(statistics.mean(quern.batch_sizes)) if quern.batch_sizes else 0
        if size < 1 or size == self.workload.in_flight:
            return None
        return self.run(size, f"bare, batch {size} (Quern's mean), after", every=True)

    def run(self, size: int, label: str, *, every: bool = False) -> Run:
        """Batches of `size`: every input for the ceiling (or when asked), else `sample`."""
        workload = self.workload
        every = every or size == workload.in_flight
        items = workload.inputs if every else workload.inputs[: workload.sample]
        started, cpu_before = time.perf_counter(), process_cpu(os.getpid())
        latencies = []
        for i in range(0, len(items), size):
            batch_started = time.perf_counter()
            self.predictor.predict_batch(items[i : i + size])
            latencies += [time.perf_counter() - batch_started] * len(items[i : i + size])
        run = Run(label, len(items), time.perf_counter() - started, latencies)
        run.cpu = {"model": process_cpu(os.getpid()) - cpu_before}
        log(f"{workload.name}: {label}: {run.throughput:.1f}/s")
        return run


@dataclass(frozen=True)
class Ceiling:
    """The bare model at batch `in_flight`, measured before and after Quern's batched run."""

    before: Run
    after: Run

    @property
    def throughput(self) -> float:
        return (self.before.throughput + self.after.throughput) / 2

    def model_ms(self) -> float:
        """The model's own CPU per item."""
        return (self.before.cpu_ms("model") + self.after.cpu_ms("model")) / 2


SPINNING = "spinning threads"


def bare_spinning(workload: Workload, weights_ref: str, model_type: str, scale: float) -> Run:
    """The ceiling again in a process whose OpenMP threads spin while they wait (libgomp's
    default, which the bare runs above do not get: main() gives this process the worker's
    policy, so that the ratio is Quern's cost, not OpenMP's). What the model does alone on
    cores it owns; the worker gets it too with OMP_WAIT_POLICY=ACTIVE (README)."""
    code = (
        "import dataclasses, json\n"
        "from bench.run import BareModel, workloads\n"
        f"w = next(w for w in workloads({scale!r}) if w.name == {workload.name!r})\n"
        f"bare = BareModel(w, {weights_ref!r}, {model_type!r})\n"
        "print(json.dumps(dataclasses.asdict(bare.ceiling('spinning'))))"
    )
    env = os.environ | {"OMP_WAIT_POLICY": "ACTIVE"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    run = Run(**json.loads(done.stdout.strip().splitlines()[-1]))
    run.label = f"bare, batch {workload.in_flight}, {SPINNING}"
    log(f"{workload.name}: bare model at batch {workload.in_flight}, {SPINNING}: "
        f"{run.throughput:.1f}/s")  # fmt: skip
    return run


@dataclass(frozen=True)
class Section:
    """One workload's figures."""

    workload: Workload
    bare: list[Run]  # the other batch sizes, and the ceiling with spinning threads
    ceiling: Ceiling
    batched: Run
    unbatched: Run
    at_quern_batch: Run | None = None  # the model at Quern's mean batch size, if not the ceiling's

    def model_ms(self) -> float:
        """The model's own CPU per item at the batch size it had inside Quern."""
        if self.at_quern_batch is not None:
            return self.at_quern_batch.cpu_ms("model")
        return self.ceiling.model_ms()


# --- the stack ----------------------------------------------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    logs: Path
    api: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None

    def start_api(self) -> None:
        port = self.base_url.rsplit(":", 1)[1]
        self.api = start(
            ["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", port,
             "--workers", "2", "--timeout-worker-healthcheck", "30", "--no-access-log"],
            self.env, self.logs / "api.log",
        )  # fmt: skip
        wait_until(lambda: http_ok(f"{self.base_url}/health"), 60, "the API")

    def start_worker(self) -> None:
        self.worker = start(
            ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "predictions.cpu",
             "--loglevel", "WARNING", "-n", f"bench-{os.getpid()}@%h"],
            self.env, self.logs / "worker.log",
        )  # fmt: skip

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the API (every uvicorn process), the worker, this client, all."""
        api = [self.api.pid, *children(self.api.pid)] if self.api else []
        return {
            "api": sum(process_cpu(pid) for pid in api),
            "worker": process_cpu(self.worker.pid) if self.worker else 0.0,
            "client": process_cpu(os.getpid()),
            "all": machine_cpu(),
        }

    def api_rss_mb(self) -> list[float]:
        """Resident memory of each uvicorn worker process (the API never imports torch)."""
        if self.api is None:
            return []
        sizes = []
        for pid in children(self.api.pid):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        return sizes

    def stop(self) -> None:
        for process in (self.worker, self.api):
            if process is not None:
                stop(process)


def register_versions(workload: Workload) -> tuple[str, str, str, str]:
    """Two bench versions copying the built-in model: batched, and batching off.
    Returns (batched id, unbatched id, weights, model type)."""
    from db.repositories import models, users
    from db.seed import SYSTEM_USER
    from db.session import session_scope

    with session_scope() as session:
        original = models.get(session, owner=SYSTEM_USER, name=workload.builtin)
        owner = users.get_by_username(session, username=SYSTEM_USER)
        assert original is not None and original.latest_version is not None and owner
        base = original.latest_version
        ids = []
        for suffix, size, wait in (("", workload.max_batch_size, workload.max_batch_wait_ms),
                                   ("-unbatched", 1, 0)):  # fmt: skip
            model = models.create(session, owner_id=owner.id, name=f"bench-{workload.name}{suffix}")
            version = models.copy_version(
                session, base, model_id=model.id, max_batch_size=size, max_batch_wait_ms=wait
            )
            ids.append(version.id)
        return ids[0], ids[1], base.weights, base.model_type


def register_mixed() -> tuple[str, str]:
    """Two copies of the built-in SmolLM2 version, max batch 16: static batching (with the
    250 ms window the built-in static version had) and continuous. Returns their ids."""
    from db.repositories import models, users
    from db.seed import SYSTEM_USER
    from db.session import session_scope

    with session_scope() as session:
        original = models.get(session, owner=SYSTEM_USER, name="smollm2-135m-instruct")
        owner = users.get_by_username(session, username=SYSTEM_USER)
        assert original is not None and original.latest_version is not None and owner
        ids = []
        for batching, wait in (("static", 250), ("continuous", 0)):
            model = models.create(session, owner_id=owner.id, name=f"bench-mixed-{batching}")
            version = models.copy_version(
                session, original.latest_version, model_id=model.id, max_batch_size=16,
                max_batch_wait_ms=wait, batching=batching,
            )  # fmt: skip
            ids.append(version.id)
        return ids[0], ids[1]


async def mixed_runs(client: "Client", stack: "Stack", scale: float) -> list[list[str]]:
    """The mixed workload on static, then continuous batching: summary rows and a section."""
    static_id, continuous_id = register_mixed()
    warm = {"prompt": "Hi", "max_new_tokens": 2, "temperature": 0, "top_p": 1}
    for version in (static_id, continuous_id):
        await asyncio.wait_for(client.run_one(version, warm), 600)
    planned = mixed.schedule(scale)
    runs = []
    for label, version in (("static", static_id), ("continuous", continuous_id)):
        runs.append(await mixed.run(client, stack.env["REDIS_URL"], label, version, planned))
        log(f"mixed lengths, {label}: {runs[-1].tokens_per_s:.1f} tokens/s")
    return mixed.report(runs[0], runs[1], planned)


async def mixed_only(stack: "Stack", options: argparse.Namespace) -> str:
    """`--only mixed`: the stack, then that workload alone (its section of RESULTS.md)."""
    stack.start_api()
    client = Client(stack.base_url, token_for(stack.base_url), stack.env["DATABASE_URL"])
    listener = asyncio.create_task(client.listen())
    await asyncio.sleep(0.5)
    stack.start_worker()
    summary, section = await mixed_runs(client, stack, options.scale)
    listener.cancel()
    await client.http.aclose()
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.2f}"
    return "\n".join([f"Run on {when} (`--only mixed`).", "", "| Figure | Value | Target |",
                      "| --- | --- | --- |", *summary, *section])  # fmt: skip


def half_repeated(count: int) -> list[dict[str, Any]]:
    """`2 * count` inputs, every other one a repeat of a text sent 128 requests before (done by
    then at 32 in flight): half the requests repeat an earlier one, none cycles back."""
    fresh = [f"Cache run sentence {n} about {TOPICS[n % 10]}." for n in range(count)]
    return [{"text": t} for n in range(count) for t in (fresh[n], fresh[max(0, n - 64)])]


def with_cache(version_id: str) -> str:
    """A copy of the version (same model, same batching) with the result cache on."""
    from db.repositories import models
    from db.session import session_scope
    from db.tables import ModelVersion

    with session_scope() as session:
        base = session.get(ModelVersion, version_id)
        assert base is not None
        copy = models.copy_version(
            session, base, model_id=base.model_id, max_batch_size=base.max_batch_size,
            max_batch_wait_ms=base.max_batch_wait_ms,
        )  # fmt: skip
        copy.cache_enabled = True
        return copy.id


# --- the client ---------------------------------------------------------------------------


class Client:
    """Creates predictions over HTTP and learns of their end from PostgreSQL's NOTIFY."""

    def __init__(self, base_url: str, token: str, database_url: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self.database_url = database_url.replace("postgresql+psycopg://", "postgresql://")
        self.finished: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        await conn.execute(f"LISTEN {STATUS_CHANNEL}")
        async for notice in conn.notifies():
            prediction_id, status = notice.payload.split()
            if status in TERMINAL:
                now = time.perf_counter()
                self.finished[prediction_id] = now
                waiter = self.waiters.pop(prediction_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    async def create(self, version: str, input: dict[str, Any]) -> str:
        response = await self.http.post(
            "/v1/predictions", json={"version": version, "input": input}
        )
        response.raise_for_status()
        return str(response.json()["id"])

    async def run_one(self, version: str, input: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Create, wait for the end, GET it. Returns (client latency, the prediction)."""
        started = time.perf_counter()
        prediction_id = await self.create(version, input)
        if prediction_id not in self.finished:
            waiter = self.waiters[prediction_id] = asyncio.get_running_loop().create_future()
            if prediction_id not in self.finished:  # it may have ended while we registered
                await waiter
        prediction = (await self.http.get(f"/v1/predictions/{prediction_id}")).json()
        latency = time.perf_counter() - started
        if prediction["status"] != "succeeded":
            raise RuntimeError(
                f"prediction {prediction_id} ended {prediction['status']}: {prediction}"
            )
        return latency, prediction

    async def closed_loop(
        self, label: str, version: str, inputs: list[dict[str, Any]], in_flight: int
    ) -> Run:
        """`in_flight` clients, each starting its next prediction when its last one is done."""
        pending = iter(inputs)
        run = Run(label, len(inputs), 0.0)

        async def client() -> None:
            for input in pending:
                latency, prediction = await self.run_one(version, input)
                run.latencies.append(latency)
                metrics = prediction["metrics"]
                run.overheads.append(latency - metrics["predict_time"])
                run.server_overheads.append(metrics["total_time"] - metrics["predict_time"])
                run.batch_sizes.append(metrics["batch_size"])

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        run.seconds = time.perf_counter() - started
        return run


def token_for(base_url: str) -> str:
    """An API token (`qrn_...`) of a new user: what a machine client authenticates with."""
    username, password = f"bench-{os.getpid()}", "bench-password-" + os.urandom(6).hex()
    httpx.post(f"{base_url}/v1/auth/register", json={"username": username, "password": password})
    response = httpx.post(
        f"{base_url}/v1/auth/token", data={"username": username, "password": password}
    )
    response.raise_for_status()
    jwt = response.json()["access_token"]
    response = httpx.post(
        f"{base_url}/v1/tokens", json={"name": "bench"}, headers={"Authorization": f"Bearer {jwt}"}
    )
    response.raise_for_status()
    return str(response.json()["token"])


def database_now() -> datetime:
    from sqlalchemy import text

    from db.session import session_scope

    with session_scope() as session:
        return session.execute(text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def wait_drained(version: str, timeout: float = 600) -> None:
    """Until no prediction of `version` is unfinished: what wrk left in flight at its end."""
    from sqlalchemy import text

    from db.session import session_scope

    def drained() -> bool:
        with session_scope() as session:
            return not session.execute(
                text("SELECT 1 FROM predictions WHERE version_id = :v "
                     "AND status IN ('starting', 'processing') LIMIT 1"), {"v": version},
            ).first()  # fmt: skip

    wait_until(drained, timeout, f"predictions of {version} to finish")


def record_rows(run: Run, version: str, since: datetime) -> None:
    """Server-side figures of the predictions created since `since`: batch sizes and overhead
    (completed_at - created_at - predict_time). Any that did not succeed is an error."""
    from sqlalchemy import text

    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            text("SELECT status, extract(epoch FROM completed_at - created_at), "
                 "(metrics->>'predict_time')::float, (metrics->>'batch_size')::int, "
                 "coalesce((metrics->>'cache_hit')::bool, false) "
                 "FROM predictions WHERE version_id = :v AND created_at >= :since"),
            {"v": version, "since": since},
        ).all()  # fmt: skip
    for status, total, predict_time, batch_size, cache_hit in rows:
        if status != "succeeded":
            run.errors += 1
            continue
        run.server_overheads.append(float(total) - predict_time)
        if cache_hit:
            run.cache_hits += 1
        else:
            run.batch_sizes.append(batch_size)


async def wrk_run(
    stack: "Stack",
    binary: str,
    token: str,
    label: str,
    version: str,
    inputs: list[dict[str, Any]],
    *,
    connections: int,
    seconds: float,
    wait: bool = True,
    openai: bool = False,
) -> Run:
    """wrk posting predictions of `version` for `seconds` (with `Prefer: wait`, or through the
    OpenAI-compatible embeddings endpoint: a closed loop of `connections` in flight). CPU per
    component while it ran; wrk's own as the client's."""
    since = database_now()
    before = stack.cpu()
    result = await asyncio.to_thread(
        load.post_predictions, binary, stack.base_url, token, version, inputs,
        connections=connections, seconds=seconds, wait=wait, openai=openai,
    )  # fmt: skip
    after = stack.cpu()
    run = Run(label, result.requests, result.seconds)
    run.cpu = {key: after[key] - before[key] for key in after}
    run.cpu["bench"], run.cpu["client"] = run.cpu["client"], result.cpu_s
    run.percentiles = dict(
        zip((50, 95, 99), (ms / 1000 for ms in result.latencies_ms), strict=True)
    )
    run.errors = result.errors
    if wait:
        wait_drained(version)
        record_rows(run, version, since)
    return run


async def profiled(
    stack: "Stack", binary: str, token: str, version: str, inputs: list[dict[str, Any]]
) -> list[str]:
    """A separate run of the embeddings load under py-spy (which costs CPU of its own, so no
    figure above comes from a profiled run)."""
    assert stack.api is not None and stack.worker is not None
    seconds = 12.0
    api_raw, worker_raw, _ = await asyncio.gather(
        asyncio.to_thread(profile.record, stack.api.pid, seconds, subprocesses=True),
        asyncio.to_thread(profile.record, stack.worker.pid, seconds),
        wrk_run(stack, binary, token, "profiled", version, inputs, connections=32,
                seconds=seconds + 2),
    )  # fmt: skip
    return [
        *profile.table("The API processes (POST /v1/predictions with Prefer: wait)", api_raw),
        *profile.table("The worker", worker_raw),
    ]


def discard_queued(redis_url: str) -> None:
    """After the accept path: drop its messages and rows so the worker never sees them."""
    import redis
    from sqlalchemy import text

    from db.session import session_scope

    redis.Redis.from_url(redis_url).delete("predictions.cpu")
    with session_scope() as session:
        session.execute(text("UPDATE predictions SET status = 'canceled', completed_at = now() "
                             "WHERE status = 'starting'"))  # fmt: skip


# --- the report ---------------------------------------------------------------------------


HEADER = (
    "| Run | Items | Throughput | p50 ms | p95 ms | p99 ms | mean batch "
    "| CPU ms per item: API / worker / client / rest |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def rest_ms(run: Run) -> float:
    """PostgreSQL, Redis, the kernel: the machine's CPU less the measured processes'."""
    named = ("api", "worker", "client", "bench")
    return (run.cpu["all"] - sum(run.cpu.get(key, 0.0) for key in named)) / run.count * 1000


def row(run: Run, unit: str) -> str:
    ms = [run.latency(q) * 1000 for q in (50, 95, 99)]
    sizes = f"{statistics.mean(run.batch_sizes):.1f}" if run.batch_sizes else "-"
    cpu = "-"
    if "all" in run.cpu:
        parts = [run.cpu_ms("api"), run.cpu_ms("worker"), run.cpu_ms("client"), rest_ms(run)]
        cpu = " / ".join(f"{part:.2f}" for part in parts)
    errors = f" ({run.errors} errors)" if run.errors else ""
    return (
        f"| {run.label}{errors} | {run.count} | {run.throughput:.1f} {unit}/s | "
        f"{ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} | {sizes} | {cpu} |"
    )


def ms(values: list[float], q: int) -> str:
    return f"{percentile(values, q) * 1000:.1f} ms"


def report(
    sections: list[Section],
    accept: Run,
    overhead: Run,
    rss: list[float],
    load_average: str,
    where: list[str],
    client: str,
    openai: Run | None = None,
    cache_runs: tuple[Run, Run] | None = None,
    mixed_report: list[list[str]] | None = None,
) -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    lines = [
        "# Quern benchmark",
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`: {os.cpu_count()} cores "
        f"({cpu}), Python {platform.python_version()}, load average before the run "
        f"{load_average}.",
        "Everything (PostgreSQL, Redis, the API with 2 uvicorn processes, one worker, the load",
        f"generator) shares these cores. The load generator is {client}; with `Prefer: wait`",
        "each connection is one prediction in flight. Auth (an API token), rate limits (lifted",
        "to 1,000,000/minute, still counted), streaming events and metrics are all on.",
        "Latencies are client-side; batch sizes and overheads come from the rows. Ratios are",
        "from this one run. CPU per item: the API's uvicorn processes, the worker process, the",
        "load generator, and the rest of the machine (PostgreSQL, Redis, the kernel) while the",
        "run lasted, divided by the items it finished. The rest is the machine's total less",
        "the processes': the kernel accounts the two apart, so where the rest is small next to",
        "the worker's (text generation) it can come out a few percent of the total below zero.",
        "",
        "## Summary",
        "",
        "| Figure | Value | Target |",
        "| --- | --- | --- |",
    ]
    body = []
    for section in sections:
        workload, ceiling, batched, unbatched = (
            section.workload,
            section.ceiling,
            section.batched,
            section.unbatched,
        )
        spinning = [r for r in section.bare if r.label.endswith(SPINNING)]
        against_spinning = (
            f"; against {SPINNING}: {batched.throughput / spinning[0].throughput:.2f}"
            if spinning
            else ""
        )
        apart = " / ".join(
            f"{batched.throughput / run.throughput:.2f}" for run in (ceiling.before, ceiling.after)
        )
        target = "≥ 0.85" if workload.name == "text-generation" else "≥ 0.6"
        model_ms = section.model_ms()
        lines += [
            f"| {workload.name}: Quern / ceiling (bare model at batch {workload.in_flight}, "
            "the worker's OpenMP policy) | "
            f"{batched.throughput / ceiling.throughput:.2f} ({apart} against the ceiling "
            f"before / after{against_spinning}) | {target} |",
            f"| {workload.name}: batched / unbatched throughput | "
            f"{batched.throughput / unbatched.throughput:.2f}x | "
            f"{'≥ 3x' if workload.name == 'text-generation' else '-'} |",
            f"| {workload.name}: CPU ms per prediction, API / worker beyond the model / rest | "
            f"{batched.cpu_ms('api'):.2f} / {batched.cpu_ms('worker') - model_ms:.2f} / "
            f"{rest_ms(batched):.2f} (the model at Quern's batches: {model_ms:.2f}; at "
            f"{workload.in_flight}: {ceiling.model_ms():.2f}) | ≤ 2 / ≤ 1.5 / ≤ 1.5 |",
        ]
        body += [
            "",
            f"## {workload.name}: {workload.in_flight} in flight, max batch "
            f"{workload.max_batch_size}, max wait {workload.max_batch_wait_ms} ms",
            "",
            HEADER,
            *(
                row(run, "predictions")
                for run in [
                    *section.bare,
                    ceiling.before,
                    batched,
                    ceiling.after,
                    *filter(None, [section.at_quern_batch]),
                    unbatched,
                ]
            ),
            "",
            f"The ceiling (bare model at batch {workload.in_flight}, every input) ran right before "
            "and right after Quern's batched run, and the ratio is against their mean: this "
            "machine's speed drifts within minutes. Bare runs of other batch sizes used the "
            f"first {workload.sample} inputs (rates, not totals, are compared). All run with the "
            "worker's OpenMP policy (OMP_WAIT_POLICY=PASSIVE unless set: threads sleep while they "
            "wait, as they must on "
            f"cores shared with the API and the databases); the '{SPINNING}' run is the "
            "ceiling again in a process of its own with libgomp's default (ACTIVE), what the "
            f"model gets alone on cores it owns. Quern ran for {workload.seconds:.0f} s "
            f"batched and {workload.seconds / 2:.0f} s unbatched. 'Worker beyond the model' "
            "subtracts the model's own CPU per item at the batch size Quern's batches had on "
            f"average, every input, measured right after ({model_ms:.2f} ms; the ceiling's: "
            f"{ceiling.model_ms():.2f}). Server-side overhead p50/p95 (batched): "
            f"{ms(batched.server_overheads, 50)} / {ms(batched.server_overheads, 95)}.",
        ]
    if openai is not None and sections and sections[0].workload.name == "embeddings":
        native = sections[0].batched
        lines.append(
            "| embeddings through /openai/v1/embeddings: throughput / API CPU ms per prediction, "
            f"against /v1/predictions | {openai.throughput / native.throughput:.2f} / "
            f"{openai.cpu_ms('api'):.2f} (native: {native.cpu_ms('api'):.2f}) | - |"
        )
        after = body.index(row(sections[0].unbatched, "predictions"))
        body.insert(after + 1, row(openai, "predictions"))
        body.append(
            "The OpenAI API run posts the same texts to `/openai/v1/embeddings` (one text a "
            "request), for half as long; its errors are the predictions in flight when wrk "
            "stopped: a client that hangs up there cancels its prediction."
        )
    if cache_runs is not None:
        without, cached = cache_runs
        lines.append(
            "| embeddings, half the inputs repeats: with / without the result cache | "
            f"{cached.throughput / without.throughput:.2f}x throughput, p50 "
            f"{cached.latency(50) * 1000:.0f} / {without.latency(50) * 1000:.0f} ms, "
            f"{cached.cache_hits / max(1, cached.count):.0%} hits | - |"
        )
        body += [
            "",
            "## embeddings with half the inputs repeated: the result cache",
            "",
            HEADER,
            row(without, "predictions"),
            row(cached, "predictions"),
            "",
            "The same inputs, every other one a repeat of a text sent 128 requests earlier, "
            "posted to the batched version and to a copy of it with the result cache on, "
            f"{cached.seconds:.0f} s each. Mean batch counts the predictions a model ran; "
            f"{cached.cache_hits} of {cached.count} were answered from the cache.",
        ]
    if mixed_report is not None:
        lines += mixed_report[0]
        body += mixed_report[1]
    lines += [
        f"| accept path: API CPU ms per create | {accept.cpu_ms('api'):.2f} | ≤ 1.5 |",
        f"| accept path: predictions created per second | {accept.throughput:.0f}/s | ≥ 1,200/s |",
        f"| low-load overhead p50, server side (completed - created - predict_time) | "
        f"{ms(overhead.server_overheads, 50)} (client side {ms(overhead.overheads, 50)}) "
        "| ≤ 5 ms |",
        f"| API RSS per uvicorn process at the end | "
        f"{', '.join(f'{mb:.0f} MB' for mb in rss)} | < 150 MB |",
        *body,
        "",
        "## Accept path and overhead",
        "",
        HEADER,
        row(accept, "creates"),
        row(overhead, "predictions"),
        "",
        "Accept path: 16 connections posting creates without `Prefer: wait` and no worker "
        "running. Overhead p50/p95, client-side (one prediction in flight, a Python client: "
        f"create, the NOTIFY, the GET): {ms(overhead.overheads, 50)} / "
        f"{ms(overhead.overheads, 95)}, including the version's batch window of "
        f"{workloads(1)[0].max_batch_wait_ms} ms; server-side (completed_at - created_at - "
        f"predict_time): {ms(overhead.server_overheads, 50)} / "
        f"{ms(overhead.server_overheads, 95)}.",
        "",
        "## Where the time goes",
        "",
        "py-spy (`record --gil`, 100 Hz) on the API processes and the worker during a separate",
        "12 s run of the embeddings load (32 in flight). Inclusive shares of the time a thread",
        "held the GIL: a stack counts towards every component it passes through.",
        "",
        *where,
    ]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


async def with_cpu(stack: Stack, measured: Awaitable[Run]) -> Run:
    """Run `measured`, noting the CPU seconds each component spent meanwhile."""
    before = stack.cpu()
    run = await measured
    after = stack.cpu()
    run.cpu = {key: after[key] - before[key] for key in after}
    return run


async def measure(stack: Stack, options: argparse.Namespace) -> str:
    if options.only == "mixed":
        return await mixed_only(stack, options)
    load_average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    chosen = workloads(options.scale)
    measured = [w for w in chosen if options.only in (None, w.name)]
    versions = {w.name: register_versions(w) for w in chosen}

    bare, bare_runs = {}, {}
    for workload in measured:
        _, _, weights_ref, model_type = versions[workload.name]
        bare[workload.name] = BareModel(workload, weights_ref, model_type)
        bare_runs[workload.name] = bare[workload.name].sizes()
        bare_runs[workload.name].append(
            bare_spinning(workload, weights_ref, model_type, options.scale)
        )

    stack.start_api()
    token = token_for(stack.base_url)
    client = Client(stack.base_url, token, stack.env["DATABASE_URL"])
    listener = asyncio.create_task(client.listen())
    await asyncio.sleep(0.5)
    binary = load.wrk()
    if binary is None:
        raise SystemExit("make bench needs wrk (apt-get install wrk): a Python client would "
                         "cost more CPU than the server it measures")  # fmt: skip

    embeddings = chosen[0]
    accept_inputs = [{"text": f"accept {n}"} for n in range(1000)]
    accept = await wrk_run(
        stack, binary, token, "accept path (no worker)", versions["embeddings"][0],
        accept_inputs, connections=16, seconds=max(4.0, 15 * options.scale), wait=False,
    )  # fmt: skip
    log(f"accept path: {accept.throughput:.0f} creates/s")
    discard_queued(stack.env["REDIS_URL"])

    stack.start_worker()
    for workload in chosen:  # load every model before timing anything
        for version in versions[workload.name][:2]:
            await asyncio.wait_for(client.run_one(version, workload.inputs[0]), 600)

    overhead = await with_cpu(
        stack,
        client.closed_loop(
            "low load (1 in flight)", versions["embeddings"][0], embeddings.inputs[:200], 1
        ),
    )
    log(f"low-load overhead p50: {percentile(overhead.overheads, 50) * 1000:.1f} ms")

    sections = []
    for workload in measured:
        batched_id, unbatched_id, _, _ = versions[workload.name]
        model = bare[workload.name]
        before = model.ceiling("before")
        batched = await wrk_run(stack, binary, token, "Quern, batched", batched_id,
                                workload.inputs, connections=workload.in_flight,
                                seconds=workload.seconds)  # fmt: skip
        ceiling = Ceiling(before, model.ceiling("after"))
        at_quern_batch = model.at_batch_of(batched)
        unbatched = await wrk_run(stack, binary, token, "Quern, unbatched", unbatched_id,
                                  workload.inputs, connections=workload.in_flight,
                                  seconds=workload.seconds / 2)  # fmt: skip
        for run in (batched, unbatched):
            log(f"{workload.name}: {run.label}: {run.throughput:.1f}/s")
        sections.append(Section(workload, bare_runs[workload.name], ceiling, batched, unbatched,
                                at_quern_batch))  # fmt: skip
    openai = None
    if options.only in (None, "embeddings"):  # the same work through the OpenAI-shaped API
        openai = await wrk_run(
            stack, binary, token, "OpenAI API, batched", versions["embeddings"][0],
            embeddings.inputs, connections=embeddings.in_flight, seconds=embeddings.seconds / 2,
            openai=True,
        )  # fmt: skip
        log(f"embeddings: OpenAI API, batched: {openai.throughput:.1f}/s")
    cache_runs = None
    if options.only in (None, "embeddings"):  # half the inputs repeat: with and without cache
        repeating = half_repeated(int(6000 * options.scale) or 1)
        cache_runs = (
            await wrk_run(
                stack, binary, token, "Quern, batched, no cache", versions["embeddings"][0],
                repeating, connections=embeddings.in_flight, seconds=embeddings.seconds / 2,
            ),
            await wrk_run(
                stack, binary, token, "Quern, batched, result cache on",
                with_cache(versions["embeddings"][0]), repeating,
                connections=embeddings.in_flight, seconds=embeddings.seconds / 2,
            ),
        )  # fmt: skip
        log(f"embeddings, half repeats: {cache_runs[1].throughput:.1f}/s with the cache, "
            f"{cache_runs[0].throughput:.1f}/s without")  # fmt: skip
    mixed_report = None
    if options.only in (None, "text-generation"):
        mixed_report = await mixed_runs(client, stack, options.scale)
    where = await profiled(stack, binary, token, versions["embeddings"][0], embeddings.inputs)
    rss = stack.api_rss_mb()
    listener.cancel()
    await client.http.aclose()
    return report(
        sections, accept, overhead, rss, load_average, where, f"wrk ({binary})", openai,
        cache_runs, mixed_report,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".quern" / "bench")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each workload")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument(
        "--only",
        choices=["embeddings", "text-generation", "mixed"],
        help="one workload (mixed: text generation of mixed lengths, static vs continuous)",
    )
    options = parser.parse_args()
    share_cores()  # the bare runs in this process get the worker's OpenMP policy
    state: Path = options.state_dir.resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env.setdefault("QUERN_ENV", "development")
    # The bench measures throughput, not the per-user guards: lift them.
    for name in ("WRITE", "READ", "AUTH"):
        env.setdefault(f"QUERN_RATE_LIMIT_{name}", "1000000/minute")
    env.setdefault("QUERN_MAX_IN_FLIGHT_PER_USER", "1000000")
    redis_server = None
    if "DATABASE_URL" not in env:
        env["DATABASE_URL"] = start_postgres(state, "quern_bench", fresh=True)
    if "REDIS_URL" not in env:
        env["REDIS_URL"], redis_server = start_redis(state, free_port())
    os.environ.update(DATABASE_URL=env["DATABASE_URL"], REDIS_URL=env["REDIS_URL"])
    run_step(["-m", "alembic", "upgrade", "head"], env)
    run_step(["-m", "db.seed"], env)

    stack = Stack(env, f"http://127.0.0.1:{free_port()}", state / "logs")
    try:
        text = asyncio.run(measure(stack, options))
    finally:
        stack.stop()
        if redis_server is not None:
            redis_server.terminate()
    print("\n" + text)
    options.output.write_text(text)
    log(f"written to {options.output} (logs in {state / 'logs'})")


if __name__ == "__main__":
    main()
