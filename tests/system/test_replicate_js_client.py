"""Replicate's official JavaScript client (`replicate` 1.4.0 on npm), unchanged, against the
live stack: each tests/js/*.test.mjs file runs under `node --test`, with a client made as the
README shows it (`baseUrl`: the API root + `/v1`). The first run installs the client with
`npm ci` from tests/js/package-lock.json; later runs reuse tests/js/node_modules."""

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from db.session import session_scope
from db.tables.model import Model
from db.tables.model_version import ModelVersion
from tests.support.helpers import create_version, register_admin, register_and_login
from tests.support.live import LiveStack

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parents[1] / "js"
LOCK = JS / "package-lock.json"
STAMP = JS / "node_modules" / ".quern-lock-sha256"  # which lock file node_modules holds
# Where a test file needs predictions that stay queued: how many such versions it uses.
SLOW_VERSIONS = {"run.test.mjs": 1, "predictions.test.mjs": 3}
# How node reports the client fetching `urls.stream` or a file URL and Quern answering 401.
REFUSED = re.compile(
    r"Request to \S+/v1/(predictions/\S+/stream|files/\S+) failed with status 401"
    r"|GET \S+/v1/files/\S+: 401"
)


class UnsignedUrlRefused(AssertionError):
    """The client fetched a URL Quern handed out (`urls.stream`, a file) without a token and
    got 401: those URLs must be signed (db/signed_urls.py), as the client sends no token."""


def npm_ci() -> None:
    """`npm ci` in tests/js unless node_modules already holds this package-lock.json; under a
    lock, so two runs in one checkout do not install at once."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: the JavaScript client tests need Node.js 20+")
    with LOCK.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = hashlib.sha256(LOCK.read_bytes()).hexdigest()
        if STAMP.is_file() and STAMP.read_text() == wanted:
            return
        subprocess.run(
            ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS,
            check=True,
            timeout=300,
        )
        STAMP.write_text(wanted)


@pytest.fixture(scope="module")
def node_modules() -> None:
    npm_ci()


def slow_version() -> dict[str, str]:
    """A new `quern/...` model copying the embeddings model, with a 4 s batch window."""
    version_id = create_version(max_batch_size=32, max_batch_wait_ms=4000)
    with session_scope() as session:
        name = session.scalar(
            select(Model.name).join(ModelVersion).where(ModelVersion.id == version_id)
        )
    return {"id": version_id, "model": f"quern/{name}"}


@pytest.fixture(scope="module")
def users(live: LiveStack) -> dict[str, str]:
    def token(headers: dict[str, str]) -> str:
        return headers["Authorization"].removeprefix("Bearer ")

    return {
        "token": token(live.headers),
        "otherToken": token(register_and_login(live.client)),  # a user with no predictions
        "adminToken": token(register_admin(live.client)),
    }


def run_node(live: LiveStack, users: dict[str, str], test_file: str) -> None:
    context = users | {
        "baseUrl": live.base_url,
        "slowVersions": [slow_version() for _ in range(SLOW_VERSIONS.get(test_file, 0))],
    }
    env = os.environ | {"QUERN_JS_CONTEXT": json.dumps(context), "NO_COLOR": "1"}
    done = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "--test-timeout=300000", test_file],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    output = done.stdout + done.stderr
    print(output)  # node's report, per test with its time (pytest -rP shows it)
    if done.returncode == 0:
        return
    if REFUSED.search(output):
        raise UnsignedUrlRefused(output)
    pytest.fail(f"node --test {test_file} failed:\n{output}", pytrace=False)


FILES = [
    "run.test.mjs",
    "predictions.test.mjs",
    "models.test.mjs",
    "errors.test.mjs",
    "webhooks.test.mjs",
    "stream.test.mjs",
    "files.test.mjs",
]


@pytest.mark.parametrize("test_file", FILES)
def test_js_client(
    live: LiveStack, users: dict[str, str], node_modules: None, test_file: str
) -> None:
    run_node(live, users, test_file)


def test_every_js_test_file_runs() -> None:
    """A new tests/js/*.test.mjs file is not forgotten by the list above."""
    assert sorted(path.name for path in JS.glob("*.test.mjs")) == sorted(FILES)
