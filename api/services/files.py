"""Files: uploads (the Files API, Replicate's) and the files predictions produced.

An upload belongs to its uploader (admins see everyone's), lives until it expires
(QUERN_FILE_TTL_S) and is then gone for every purpose; the cleaner (workers/sweeper.py) deletes
its row and bytes. Its type is checked against its bytes. A prediction's output file is read
by its owner or through the signed URL in the prediction's output.
"""

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import filetype

from api.deps import SIGNED_URL_REFUSED, SignedUrl, Transaction, owner_scope
from api.errors import Conflict, Forbidden, NotFound, PayloadTooLarge, Unprocessable
from api.schemas.files import FileOut, FilePage
from api.settings import ApiSettings
from db.ids import is_id
from db.repositories import file_bytes, files
from db.signed_urls import get_url_signer
from db.tables import File, User

# `<created_at in microseconds since 1970>.<id>`: where the next page starts.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[a-z2-7]{26}$"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# RFC 6838's restricted names: type/subtype, nothing else (parameters are dropped).
MEDIA_TYPE_PATTERN = (
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}$"
)
SNIFF_BYTES = 8192
MAX_METADATA_CHARS = 16_384
OCTET_STREAM = "application/octet-stream"


def get(tx: Transaction, reader: User | SignedUrl, file_id: str) -> File:
    """With a token, another user's file, like a malformed, unknown or expired id, is 404: its
    existence never leaks. With a signed URL, one that does not grant this file as an output of
    the prediction its row names is 403, the same 403 for a file that does not exist."""
    if isinstance(reader, SignedUrl):
        file = files.get(tx.session, id=file_id) if is_id(file_id) else None
        signer = get_url_signer()
        if (
            file is None
            or file.prediction_id is None
            or not signer.check_file(file.id, file.prediction_id, reader.expires, reader.signature)
        ):
            raise Forbidden(SIGNED_URL_REFUSED)
        return file
    file = (
        files.get(tx.session, id=file_id, owner_id=owner_scope(reader)) if is_id(file_id) else None
    )
    if file is None or files.is_expired(file):
        raise NotFound(f"No file {file_id!r}")
    return file


def content(file: File) -> Iterator[bytes]:
    return file_bytes.read(file)


def to_out(file: File, base_url: str) -> FileOut:
    url = f"{base_url}/v1/files/{file.id}"
    return FileOut(
        id=file.id,
        name=file.filename or file.id,
        content_type=file.content_type,
        size=file.size,
        etag=file.sha256,
        checksums={"sha256": file.sha256},
        metadata=file.file_metadata,
        created_at=file.created_at,
        expires_at=file.expires_at,
        urls={"get": url, "download": f"{url}/download"},
    )


def upload(
    tx: Transaction,
    user: User,
    source: BinaryIO,
    *,
    declared_type: str | None,
    filename: str | None,
    metadata: str | None,
    settings: ApiSettings,
    base_url: str,
) -> FileOut:
    """Store an upload, a chunk at a time. 422 when its bytes are not the type it claims, or
    its metadata is not a JSON object; 413 past QUERN_MAX_FILE_BYTES."""
    head = source.read(SNIFF_BYTES)
    source.seek(0)
    content_type = _checked_type(declared_type, head)
    file = files.create_upload(
        tx.session,
        owner_id=user.id,
        content_type=content_type,
        filename=filename,
        metadata=_metadata(metadata),
        ttl_s=settings.file_ttl_s,
    )
    try:
        file.size, file.sha256 = file_bytes.write(
            tx.session, file.id, source, settings.max_file_bytes
        )
    except file_bytes.TooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    tx.session.flush()
    tx.session.refresh(file)
    return to_out(file, base_url)


def list_uploads(
    tx: Transaction, user: User, cursor: str | None, page_size: int, base_url: str
) -> FilePage:
    """The user's unexpired uploads, newest first; `next` carries on."""
    before = _decode_cursor(cursor) if cursor else None
    rows = files.list_uploads(tx.session, owner_id=user.id, limit=page_size + 1, before=before)
    more = len(rows) > page_size
    rows = rows[:page_size]
    next_url = None
    if more:
        micros = (rows[-1].created_at - EPOCH) // MICROSECOND
        next_url = f"{base_url}/v1/files?cursor={micros}.{rows[-1].id}&page_size={page_size}"
    return FilePage(next=next_url, results=[to_out(file, base_url) for file in rows])


def delete(tx: Transaction, user: User, file_id: str) -> None:
    """An upload, for good. A prediction's output goes with its prediction: 409."""
    file = get(tx, user, file_id)
    if file.prediction_id is not None:
        raise Conflict("This file is a prediction's output: it is kept with the prediction")
    files.delete(tx.session, file=file)


def media_type(header: str | None) -> str | None:
    """The media type of a part's Content-Type header, lower case; None if it has none that
    is valid."""
    value = (header or "").split(";")[0].strip().lower()
    return value if re.fullmatch(MEDIA_TYPE_PATTERN, value) else None


def _checked_type(declared: str | None, head: bytes) -> str:
    """The file's content type: the declared one, checked against the bytes where the type is
    one that bytes can tell (images, audio, video, archives, PDF...); what the bytes say when
    nothing (or application/octet-stream) is declared."""
    sniffed = filetype.guess_mime(head) if head else None
    if not declared or declared == OCTET_STREAM:
        return str(sniffed or OCTET_STREAM)
    declared = declared.lower()
    if sniffed is not None and sniffed != declared:
        reason = f"The bytes are {sniffed}, not {declared}"
    elif sniffed is None and filetype.get_type(mime=declared) is not None:
        reason = f"The bytes are not {declared}"
    else:
        return declared
    raise Unprocessable(reason, invalid_fields=[{"field": "type", "message": reason}])


def _metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    reason = None
    try:
        value = json.loads(raw) if len(raw) <= MAX_METADATA_CHARS else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        reason = f"A JSON object of at most {MAX_METADATA_CHARS} characters"
        raise Unprocessable.field("metadata", reason)
    return value


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor the route has checked against CURSOR_PATTERN: every such one is a position."""
    micros, file_id = cursor.split(".")
    return EPOCH + int(micros) * MICROSECOND, file_id
