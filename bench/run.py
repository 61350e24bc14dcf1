"""`make bench`: Quern against the bare model, batched against unbatched, in one run.

Starts the real stack (PostgreSQL and Redis, embedded unless DATABASE_URL/REDIS_URL are set;
the API; one worker), then measures, on this machine and in this order:
  1. the bare models in this process at batch sizes 1, 8, 16, 32 (the ceiling);
  2. the accept path: predictions created per second with no worker running;
  3. the low-load overhead: end-to-end latency minus model time, one prediction in flight;
  4. Quern with batching and with batching off (max batch size 1), for both workloads.
Clients learn that a prediction finished from PostgreSQL's NOTIFY (as `Prefer: wait` will),
then GET it, as a client does. Results are printed and written to bench/RESULTS.md.
"""

import argparse
import asyncio
import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from db.repositories.predictions import STATUS_CHANNEL
from scripts.local_stack import log, run_step, start_postgres, start_redis
from tests.processes import free_port, http_ok, start, stop, wait_until

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
    # Rates need no full pass: runs other than the headline pair (Quern batched, bare model at
    # batch `in_flight`) use the first `sample` inputs, so the bench takes minutes, not an hour.
    sample: int


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

    @property
    def throughput(self) -> float:
        return self.count / self.seconds

    def latency(self, q: int) -> float:
        return percentile(self.latencies, q)


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


def bare_model(workload: Workload, weights_ref: str, model_type: str) -> list[Run]:
    from models import registry, weights

    predictor = registry.create(model_type, weights.resolve(weights_ref), "cpu")
    predictor.setup()
    predictor.predict_batch(workload.inputs[:2])  # warm-up
    runs = []
    for size in workload.bare_batch_sizes:
        items = (
            workload.inputs if size == workload.in_flight else workload.inputs[: workload.sample]
        )
        started = time.perf_counter()
        latencies = []
        for i in range(0, len(items), size):
            batch_started = time.perf_counter()
            predictor.predict_batch(items[i : i + size])
            latencies += [time.perf_counter() - batch_started] * len(items[i : i + size])
        runs.append(
            Run(f"bare, batch {size}", len(items), time.perf_counter() - started, latencies)
        )
        log(f"{workload.name}: bare model at batch {size}: {runs[-1].throughput:.1f}/s")
    del predictor
    gc.collect()
    return runs


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

    async def accept_path(self, version: str, inputs: list[dict[str, Any]], in_flight: int) -> Run:
        pending = iter(inputs)
        run = Run("accept path (no worker)", len(inputs), 0.0)

        async def client() -> None:
            for input in pending:
                started = time.perf_counter()
                await self.create(version, input)
                run.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(in_flight)))
        run.seconds = time.perf_counter() - started
        return run


def token_for(base_url: str) -> str:
    username, password = f"bench-{os.getpid()}", "bench-password-" + os.urandom(6).hex()
    httpx.post(f"{base_url}/v1/auth/register", json={"username": username, "password": password})
    response = httpx.post(
        f"{base_url}/v1/auth/token", data={"username": username, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


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


def row(run: Run, unit: str) -> str:
    ms = [run.latency(q) * 1000 for q in (50, 95, 99)]
    sizes = f"{statistics.mean(run.batch_sizes):.1f}" if run.batch_sizes else "-"
    cpu = "-"
    if run.cpu:
        rest = run.cpu["all"] - run.cpu["api"] - run.cpu["worker"] - run.cpu["client"]
        parts = [run.cpu["api"], run.cpu["worker"], run.cpu["client"], rest]
        cpu = " / ".join(f"{part / run.count * 1000:.1f}" for part in parts)
    return (
        f"| {run.label} | {run.count} | {run.throughput:.1f} {unit}/s | "
        f"{ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} | {sizes} | {cpu} |"
    )


def report(
    sections: list[tuple[Workload, list[Run], Run, Run]],
    accept: Run,
    overhead: Run,
    rss: list[float],
    load: str,
) -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    lines = [
        "# Quern benchmark",
        "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`: {os.cpu_count()} cores "
        f"({cpu}), Python {platform.python_version()}, load average before the run {load}.",
        "Everything (PostgreSQL, Redis, the API with 2 uvicorn processes, one worker, this",
        "client) shares these cores. Latencies are client-side: create, wait for the end",
        "(PostgreSQL NOTIFY), GET. Ratios are from this one run. CPU per item: the API's uvicorn",
        "processes, the worker process, this client, and the rest of the machine (PostgreSQL,",
        "Redis, the kernel) while the run lasted, divided by the items it finished.",
        "",
        "## Summary",
        "",
        "| Figure | Value | Target |",
        "| --- | --- | --- |",
    ]
    body = []
    for workload, bare, batched, unbatched in sections:
        ceiling = next(r for r in bare if r.label == f"bare, batch {workload.in_flight}")
        target = "≥ 0.8" if workload.name == "text-generation" else "≥ 0.6"
        lines.append(
            f"| {workload.name}: Quern / ceiling (bare model at batch {workload.in_flight}) | "
            f"{batched.throughput / ceiling.throughput:.2f} | {target} |"
        )
        lines.append(
            f"| {workload.name}: batched / unbatched throughput | "
            f"{batched.throughput / unbatched.throughput:.2f}x | "
            f"{'≥ 3x' if workload.name == 'text-generation' else '-'} |"
        )
        unit = "predictions"
        body += [
            "",
            f"## {workload.name}: {len(workload.inputs)} inputs, {workload.in_flight} in flight, "
            f"max batch {workload.max_batch_size}, max wait {workload.max_batch_wait_ms} ms",
            "",
            HEADER,
            *(row(run, unit) for run in [*bare, batched, unbatched]),
        ]
        if workload.sample < len(workload.inputs):
            body.append(
                f"\nRuns other than Quern batched and bare batch {workload.in_flight} used the "
                f"first {workload.sample} inputs (rates, not totals, are compared)."
            )
    lines += [
        f"| accept path: predictions created per second | {accept.throughput:.0f}/s | ≥ 1,200/s |",
        f"| low-load overhead p50 (latency - predict_time, 1 in flight) | "
        f"{percentile(overhead.overheads, 50) * 1000:.1f} ms client-side, "
        f"{percentile(overhead.server_overheads, 50) * 1000:.1f} ms server-side | ≤ 10 ms |",
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
        f"Overhead p50/p95, client-side: {percentile(overhead.overheads, 50) * 1000:.1f} / "
        f"{percentile(overhead.overheads, 95) * 1000:.1f} ms (the create, the version's batch "
        f"window of {sections[0][0].max_batch_wait_ms} ms, the NOTIFY, the GET); server-side "
        f"(completed_at - created_at - predict_time): "
        f"{percentile(overhead.server_overheads, 50) * 1000:.1f} / "
        f"{percentile(overhead.server_overheads, 95) * 1000:.1f} ms.",
        "",
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
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    chosen = workloads(options.scale)
    versions = {w.name: register_versions(w) for w in chosen}

    bare = {}
    for workload in chosen:
        _, _, weights_ref, model_type = versions[workload.name]
        bare[workload.name] = bare_model(workload, weights_ref, model_type)

    stack.start_api()
    client = Client(stack.base_url, token_for(stack.base_url), stack.env["DATABASE_URL"])
    listener = asyncio.create_task(client.listen())
    await asyncio.sleep(0.5)

    embeddings = chosen[0]
    accept_inputs = [{"text": f"accept {n}"} for n in range(int(3000 * options.scale) or 1)]
    accept = await with_cpu(stack, client.accept_path(versions["embeddings"][0], accept_inputs, 32))
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
    for workload in chosen:
        batched_id, unbatched_id, _, _ = versions[workload.name]
        runs = []
        for label, version, inputs in (
            ("Quern, batched", batched_id, workload.inputs),
            ("Quern, unbatched", unbatched_id, workload.inputs[: workload.sample]),
        ):
            measured = client.closed_loop(label, version, inputs, workload.in_flight)
            runs.append(await with_cpu(stack, measured))
            log(f"{workload.name}: {label}: {runs[-1].throughput:.1f}/s")
        sections.append((workload, bare[workload.name], runs[0], runs[1]))
    rss = stack.api_rss_mb()
    listener.cancel()
    await client.http.aclose()
    return report(sections, accept, overhead, rss, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".quern" / "bench")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each workload")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    options = parser.parse_args()
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
