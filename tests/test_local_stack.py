"""`make run`'s mode: embedded PostgreSQL and Redis, a worker and the API, from one command."""

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.processes import ROOT, free_port, wait_for_prediction, wait_until

pytestmark = pytest.mark.slow


def test_embedded_default_completes_a_prediction(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env = {k: v for k, v in env.items() if k not in ("QUERN_ENV", "QUERN_JWT_SECRET")}
    port = free_port()
    state = tmp_path / "state"
    launcher = subprocess.Popen(
        [sys.executable, "scripts/local_stack.py", "--state-dir", str(state),
         "--port", str(port), "--redis-port", str(free_port())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(launcher.stdout.readline, "")))
    reader.start()
    try:
        wait_until(lambda: "Quern is ready" in "".join(output), 120, "the local stack")
        match = re.search(r"QUERN_TOKEN=(\S+)", "".join(output))
        assert match, "".join(output)
        headers = {"Authorization": f"Bearer {match.group(1)}"}
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
    finally:
        launcher.terminate()
        launcher.wait(90)
        reader.join(10)

    def embedded_postgres_stopped() -> bool:
        for process in psutil.process_iter(["cmdline"]):
            if str(state / "pgdata") in " ".join(process.info["cmdline"] or []):
                return process.status() == psutil.STATUS_ZOMBIE
        return True

    wait_until(embedded_postgres_stopped, 30, "the embedded PostgreSQL to stop")
