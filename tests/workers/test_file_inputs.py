"""File inputs made local by the worker: a Quern upload read from PostgreSQL, a data: URL, an
http URL fetched through the SSRF guard; the model gets paths; an input whose file cannot be
had fails alone."""

import base64
import hashlib
import http.server
import io
import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from common.webhook_guard import get_guard_settings
from db.repositories import file_bytes, files, predictions, users
from db.session import session_scope
from tests.support.helpers import create_version, new_username
from tests.workers.stubs import Recording, StandInRuntime, load, run_together
from workers import sweeper
from workers.celery_app import app
from workers.settings import WorkerSettings

SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "format": "uri"},
        "extra": {"type": "array", "items": {"type": "string", "format": "uri"}},
    },
    "required": ["image"],
}
BYTES = os.urandom(3 * 1024 * 1024 + 7)  # several chunks


class Digests(Recording):
    """Answers the SHA-256 and suffix of each file it was given (paths, never URLs)."""

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        self.batches.append([str(item["image"]) for item in inputs])
        return [
            [self.digest(item["image"]), *(self.digest(p) for p in item.get("extra", []))]
            for item in inputs
        ]

    @staticmethod
    def digest(path: Path) -> str:
        assert isinstance(path, Path) and path.is_file()
        return f"{hashlib.sha256(path.read_bytes()).hexdigest()}{path.suffix}"


@pytest.fixture
def version() -> str:
    return create_version(max_batch_size=8, max_batch_wait_ms=200, input_schema=SCHEMA)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An http server on loopback (allowed for this test) serving BYTES at /cat.png."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/cat.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(BYTES)))
            self.end_headers()
            self.wfile.write(BYTES)

        def log_message(self, *args: Any) -> None: ...

    monkeypatch.setattr(
        get_guard_settings(), "allowed_networks", [ipaddress.ip_network("127.0.0.1/32")]
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll: shutdown() waits it out (by default half a second, every test).
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def prediction(version: str, owner_id: str, input: dict[str, Any]) -> str:
    with session_scope() as session:
        return predictions.create(
            session, owner_id=owner_id, version_id=version, input=input, deadline=None
        ).id


def uploaded(owner_id: str, data: bytes, ttl_s: int = 3600) -> str:
    with session_scope() as session:
        file = files.create_upload(
            session, owner_id=owner_id, content_type="image/png", filename="cat.png",
            metadata={}, ttl_s=ttl_s,
        )  # fmt: skip
        file.size, file.sha256 = file_bytes.write(session, file.id, io.BytesIO(data), 10**9)
        return file.id


def new_user() -> str:
    with session_scope() as session:
        return users.create(session, username=new_username(), password_hash=None).id


def test_each_kind_of_file_input_reaches_the_model_as_a_local_path(
    runtime: StandInRuntime, version: str, server: str
) -> None:
    model = runtime.use(Digests)
    owner = new_user()
    file_url = f"http://api.example/v1/files/{uploaded(owner, BYTES)}"
    data_url = "data:image/png;base64," + base64.b64encode(BYTES[:1000]).decode()
    ids = [
        prediction(version, owner, {"image": file_url}),
        prediction(version, owner, {"image": data_url, "extra": [f"{server}/cat.png"]}),
    ]
    done = run_together(runtime, version, ids)
    digest = hashlib.sha256(BYTES).hexdigest()
    assert [p.status for p in done] == ["succeeded", "succeeded"], [p.error for p in done]
    assert done[0].output == [f"{digest}.png"]
    assert done[1].output == [f"{hashlib.sha256(BYTES[:1000]).hexdigest()}.png", f"{digest}.png"]
    assert len(model.batches) == 1  # fetched first, then one batch
    leftovers = [Path(p) for p in model.batches[0]]
    assert not any(p.exists() for p in leftovers)  # removed once the batch ran


def test_an_input_whose_file_cannot_be_had_fails_alone(
    runtime: StandInRuntime, version: str, server: str
) -> None:
    runtime.use(Digests)
    owner, stranger = new_user(), new_user()
    theirs = f"http://api.example/v1/files/{uploaded(stranger, b'secret')}"
    expired = uploaded(owner, b"old")
    with session_scope() as session:
        session.execute(
            text("UPDATE files SET expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": expired},
        )
    ids = [
        prediction(version, owner, {"image": theirs}),
        prediction(version, owner, {"image": f"http://api.example/v1/files/{expired}"}),
        prediction(version, owner, {"image": f"{server}/missing.png"}),
        prediction(version, owner, {"image": "http://10.1.2.3/cat.png"}),
        prediction(version, owner, {"image": f"{server}/cat.png"}),
    ]
    done = run_together(runtime, version, ids)
    assert [p.status for p in done] == ["failed"] * 4 + ["succeeded"]
    errors = [p.error or "" for p in done[:4]]
    assert "input.image: no file" in errors[0] and "has expired" in errors[1]
    assert "HTTP 404" in errors[2] and "private address" in errors[3]
    assert load(ids[4]).output == [f"{hashlib.sha256(BYTES).hexdigest()}.png"]


def test_the_sweeper_removes_expired_uploads_with_their_bytes(settings: WorkerSettings) -> None:
    owner = new_user()
    expired, kept = uploaded(owner, BYTES), uploaded(owner, b"fresh")
    with session_scope() as session:
        session.execute(
            text("UPDATE files SET expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": expired},
        )
    broker = redis.Redis.from_url(settings.redis_url)
    sweeper.sweep(app, settings, broker)
    broker.close()
    with session_scope() as session:
        left = session.execute(
            text("SELECT (SELECT count(*) FROM files WHERE id = :e), "
                 "(SELECT count(*) FROM file_chunks WHERE file_id = :e), "
                 "(SELECT count(*) FROM files WHERE id = :k)"),
            {"e": expired, "k": kept},
        ).one()  # fmt: skip
    assert tuple(left) == (0, 0, 1)
