"""Clients that hang up mid-request are a normal event, not a server fault: a real uvicorn
whose waiting requests lose their clients logs no error and no traceback."""

import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.conftest import API_REDIS_URL, DATABASE_URL
from tests.support.helpers import register_and_login
from tests.support.processes import free_port, http_ok, start, stop, wait_until

pytestmark = pytest.mark.slow


def test_clients_hanging_up_on_waiting_creates_log_no_error(tmp_path: Path) -> None:
    import httpx

    port = free_port()
    # The API's Redis database has no worker: every create waits out its Prefer: wait.
    env = os.environ | {"DATABASE_URL": DATABASE_URL, "REDIS_URL": API_REDIS_URL}
    log = tmp_path / "api.log"
    api = start(["-m", "uvicorn", "api.main:app", "--port", str(port)], env, log)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 60, "the API")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            token = register_and_login(client)["Authorization"]
        body = json.dumps({"model": "quern/all-minilm-l6-v2", "input": {"text": "bye"}})
        request = (
            f"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
            f"Content-Type: application/json\r\nPrefer: wait=20\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        for sock in sockets:
            sock.sendall(request)
        time.sleep(1.5)  # every request is in, waiting
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, as a killed load client leaves
        time.sleep(2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            listed = client.get("/v1/predictions", headers={"Authorization": token}).json()
        assert len(listed["results"]) == 20  # every request was in when its client went
    finally:
        stop(api)
    lines = log.read_text().splitlines()
    errors = [line for line in lines if '"level": "ERROR"' in line or "Traceback" in line]
    assert errors == [], errors[:3]
