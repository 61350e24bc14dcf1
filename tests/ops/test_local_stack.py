"""`make run`'s mode: embedded PostgreSQL and Redis, a worker and the API, from one command,
and the supervisor that restarts a crashed worker or stops all when the API or Redis exits."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest

from scripts.local_stack import Supervisor
from tests.support.processes import ROOT, free_port, wait_for_prediction, wait_until


def python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


SLEEPER = "import time; time.sleep(60)"
FAST = {"first_delay": 0.05, "max_delay": 0.2, "stable_s": 60.0, "poll_s": 0.02}


def supervise_until(supervisor: Supervisor, done: Callable[[], bool], timeout: float = 10) -> None:
    """Runs the supervisor's checks until `done`; no essential child may exit meanwhile."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        assert supervisor.check() is None
        time.sleep(0.02)


def test_a_killed_worker_is_restarted_and_the_log_says_which_and_how(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisor = Supervisor(**FAST)
    api = supervisor.essential("API", python(SLEEPER))
    worker = supervisor.restartable("worker cpu", partial(python, SLEEPER))
    try:
        worker.kill()
        supervise_until(supervisor, lambda: supervisor.children[1].process is not worker)
        restarted = supervisor.children[1].process
        assert restarted.pid != worker.pid and restarted.poll() is None
        assert api.poll() is None
    finally:
        supervisor.stop()
    assert api.returncode == restarted.returncode == -signal.SIGTERM
    out = capsys.readouterr().out
    assert (
        f"[quern] worker cpu (pid {worker.pid}) was killed by SIGKILL; restarting it in 0.05 s"
    ) in out
    assert f"[quern] worker cpu restarted (pid {restarted.pid})" in out


def test_the_api_exiting_stops_the_rest_and_the_log_says_which_and_how(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisor = Supervisor(**FAST)
    worker = supervisor.restartable("worker cpu", partial(python, SLEEPER))
    api = supervisor.essential("API", python("import sys, time; time.sleep(0.3); sys.exit(3)"))
    try:
        assert supervisor.watch().process is api
    finally:
        supervisor.stop()
    assert worker.returncode == -signal.SIGTERM
    out = capsys.readouterr().out
    assert f"[quern] API (pid {api.pid}) exited with code 3; stopping the rest" in out


@pytest.mark.parametrize(
    ("code", "stable_s", "expected"),
    [
        ("raise SystemExit(1)", 60.0, ["0.05", "0.1", "0.2", "0.2"]),  # doubling to the cap
        ("import time; time.sleep(0.3); raise SystemExit(1)", 0.2, ["0.05"] * 3),  # stayed up
    ],
)
def test_a_crash_looping_worker_backs_off_and_the_backoff_resets_once_it_stayed_up(
    capsys: pytest.CaptureFixture[str], code: str, stable_s: float, expected: list[str]
) -> None:
    supervisor = Supervisor(**(FAST | {"stable_s": stable_s}))
    supervisor.restartable("worker cpu", partial(python, code))
    out: list[str] = []

    def delays() -> list[str]:
        out.append(capsys.readouterr().out)
        return re.findall(r"exited with code 1; restarting it in (\S+) s", "".join(out))

    try:
        supervise_until(supervisor, lambda: len(delays()) >= len(expected))
    finally:
        supervisor.stop()
    assert delays()[: len(expected)] == expected


@pytest.mark.slow
def test_embedded_default_completes_a_prediction(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    unset = ("QUERN_ENV", "QUERN_JWT_SECRET", "QUERN_SIGNED_URL_SECRET")
    env = {k: v for k, v in env.items() if k not in unset}
    port = free_port()
    state = tmp_path / "state"
    launcher = subprocess.Popen(
        [sys.executable, "scripts/local_stack.py", "--state-dir", str(state),
         "--port", str(port), "--redis-port", str(free_port())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    stdout = launcher.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: output.extend(iter(stdout.readline, "")))
    reader.start()
    try:
        wait_until(lambda: "Quern is ready" in "".join(output), 120, "the local stack")
        match = re.search(r"QUERN_TOKEN=(\S+)", "".join(output))
        assert match, "".join(output)
        headers = {"Authorization": f"Bearer {match.group(1)}"}
        # The CPU worker, killed, is restarted: the prediction below runs on its successor.
        (worker,) = [
            child
            for child in psutil.Process(launcher.pid).children()
            if "predictions.cpu" in child.cmdline()
        ]
        worker.kill()
        wait_until(
            lambda: f"worker cpu (pid {worker.pid}) was killed by SIGKILL" in "".join(output),
            10,
            "the supervisor to notice the killed worker",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            response = client.post(
                "/v1/predictions",
                json={"model": "quern/all-minilm-l6-v2", "input": {"text": "embedded"}},
                headers=headers,
            )
            assert response.status_code == 201, response.text
            done = wait_for_prediction(
                client, f"/v1/predictions/{response.json()['id']}", headers, timeout=240
            )
        assert done["status"] == "succeeded", done
        assert isinstance(done["output"], list) and len(done["output"]) == 384
        # Signed with the secret it generated and keeps: the stream opens without a token.
        assert (state / "signed-url-secret").stat().st_mode & 0o777 == 0o600
        with httpx.Client(timeout=30) as anonymous:
            streamed = anonymous.get(done["urls"]["stream"])
        assert streamed.status_code == 200 and "event: done" in streamed.text
    finally:
        launcher.terminate()
        launcher.wait(90)
        reader.join(10)

    def embedded_postgres_stopped() -> bool:
        for process in psutil.process_iter(["cmdline"]):
            if str(state / "pgdata") in " ".join(process.info["cmdline"] or []):
                return bool(process.status() == psutil.STATUS_ZOMBIE)
        return True

    wait_until(embedded_postgres_stopped, 30, "the embedded PostgreSQL to stop")
