"""File inputs made local before a batch runs (db/file_inputs.py says what they are).

Each file value becomes a `pathlib.Path` to a temporary file with its bytes, named with an
extension from its type, removed once the batch has run: a model reads files, never URLs. A
Quern file is read from PostgreSQL a chunk at a time (no disk is shared with the API); a
`data:` URL is decoded; an http(s) URL is fetched through the SSRF guard, to the address it
checked, within QUERN_WORKER_INPUT_FETCH_TIMEOUT_S and QUERN_WORKER_MAX_INPUT_FILE_BYTES. An
input whose file cannot be had fails alone, with the reason.
"""

import contextlib
import dataclasses
import mimetypes
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from common import webhook_guard
from db.file_inputs import is_data_url, parse_data_url, quern_file_id
from db.repositories import file_bytes, files
from db.repositories.predictions import Claim
from db.session import session_scope
from workers.settings import WorkerSettings
from workers.webhooks.sending import pinned


class InputFileError(Exception):
    """This input's file cannot be had; the message says why, for the prediction's error."""


@contextlib.contextmanager
def localized(
    claims: list[Claim], fields: tuple[str, ...], settings: WorkerSettings
) -> Iterator[tuple[list[Claim], dict[str, str]]]:
    """(the claims whose files are local now, their file inputs replaced by paths; the error
    of each claim whose files could not be had, by id). The files go on exit."""
    if not fields:
        yield claims, {}
        return
    with tempfile.TemporaryDirectory(prefix="quern-inputs-") as directory:
        ready, failed = [], {}
        for claim in claims:
            try:
                local = _localize(claim, fields, Path(directory), settings)
            except InputFileError as exc:
                failed[claim.id] = str(exc)
            else:
                ready.append(dataclasses.replace(claim, input=local))
        yield ready, failed


def _localize(
    claim: Claim, fields: tuple[str, ...], directory: Path, settings: WorkerSettings
) -> dict[str, Any]:
    local = dict(claim.input)
    for name in fields:
        value = claim.input.get(name)
        if isinstance(value, str):
            local[name] = _fetch(claim, name, value, directory, settings)
        elif isinstance(value, list):
            local[name] = [
                _fetch(claim, f"{name}[{i}]", item, directory, settings)
                for i, item in enumerate(value)
            ]
    return local


def _fetch(claim: Claim, path: str, value: str, directory: Path, settings: WorkerSettings) -> Path:
    target = directory / f"{claim.id}-{path.replace('[', '-').rstrip(']')}"
    file_id = quern_file_id(value)
    content_type: str | None
    try:
        if file_id is not None:
            content_type = _read_quern_file(claim, file_id, target)
        elif is_data_url(value):
            content_type, data = parse_data_url(value)
            target.write_bytes(data)
        else:
            content_type = _download(value, target, settings)
    except (InputFileError, ValueError) as exc:  # ValueError: a data: URL that does not decode
        raise InputFileError(f"input.{path}: {exc}") from None
    extension = mimetypes.guess_extension(content_type or "") or ""
    return target.rename(target.with_suffix(extension)) if extension else target


def _read_quern_file(claim: Claim, file_id: str, target: Path) -> str:
    with session_scope() as session:
        file = files.get(session, id=file_id, owner_id=claim.owner_id)
        if file is not None:
            session.expunge(file)
    if file is None:
        raise InputFileError(f"no file {file_id!r}")
    if files.is_expired(file):
        raise InputFileError(f"the file {file_id!r} has expired")
    with target.open("wb") as out:
        for chunk in file_bytes.read(file):
            out.write(chunk)
    return file.content_type


def _download(url: str, target: Path, settings: WorkerSettings) -> str | None:
    """GET `url` into `target` through the SSRF guard; the answer's content type."""
    deadline = time.monotonic() + settings.input_fetch_timeout_s
    try:
        checked = webhook_guard.check(url, timeout_s=settings.input_fetch_timeout_s)
        with httpx.Client(
            trust_env=False, follow_redirects=False, timeout=settings.input_fetch_timeout_s
        ) as client:
            response = client.send(pinned(client, "GET", checked), stream=True)
            try:
                if response.status_code != 200:
                    raise InputFileError(f"fetching it answered HTTP {response.status_code}")
                size = 0
                with target.open("wb") as out:
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > settings.max_input_file_bytes:
                            raise InputFileError(
                                f"it is larger than {settings.max_input_file_bytes} bytes"
                            )
                        if time.monotonic() > deadline:
                            raise InputFileError(
                                f"it took longer than {settings.input_fetch_timeout_s:g}s to fetch"
                            )
                        out.write(chunk)
            finally:
                response.close()
    except webhook_guard.RefusedUrl as exc:
        raise InputFileError(f"refused: {exc}") from None
    except httpx.HTTPError as exc:
        raise InputFileError(f"fetching it failed: {type(exc).__name__}: {exc}") from None
    content_type = response.headers.get("content-type")
    return None if content_type is None else content_type.split(";")[0].strip()
