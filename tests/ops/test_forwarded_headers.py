"""The API as `make run` starts it trusts X-Forwarded-For from no one by default: a local
client cannot pose as other addresses to reset the per-address sign-in limit."""

import os
import subprocess
import sys

import httpx

from scripts.local_stack import api_command
from tests.support.processes import ROOT, free_port, http_ok, stop, wait_until


def test_a_spoofed_forwarded_for_does_not_reset_the_sign_in_limit(tmp_path) -> None:
    port = free_port()
    env = dict(os.environ, QUERN_RATE_LIMIT_AUTH="3/minute")
    env.pop("FORWARDED_ALLOW_IPS", None)
    api = subprocess.Popen(
        [sys.executable, *api_command(port)], cwd=ROOT, env=env,
        stdout=(tmp_path / "api.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 60, "the API")
        statuses = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for n in range(5):
                response = client.post(
                    "/v1/auth/token",
                    data={"username": "nobody-here", "password": "guess"},
                    headers={"X-Forwarded-For": f"203.0.113.{n}"},
                )
                statuses.append(response.status_code)
        # Other live tests may have signed in from 127.0.0.1 this minute: the first 429 may come
        # early, but once limited, no claimed address gets through.
        assert 429 in statuses, statuses
        first = statuses.index(429)
        assert set(statuses[:first]) <= {401} and set(statuses[first:]) == {429}, statuses
    finally:
        stop(api)
