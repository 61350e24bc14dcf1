"""Where uploaded files' bytes live: PostgreSQL, in 1 MiB chunks (`file_chunks`).

`write` and `read` are the whole interface: a store in S3-compatible object storage replaces
these two functions (a multipart upload, a ranged read) and nothing else. Either way no process
holds a large file whole: a chunk at a time goes in and comes out. A prediction's output files
keep their bytes inline (`files.data`); `read` serves both.
"""

import hashlib
from collections.abc import Iterator
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.session import session_scope
from db.tables import File, FileChunk

CHUNK_BYTES = 1 << 20


class TooLarge(Exception):
    """More bytes than the limit: the caller's transaction must not commit what was written."""


def write(session: Session, file_id: str, source: BinaryIO, limit: int) -> tuple[int, str]:
    """Store `source`'s bytes as file `file_id`'s (its row exists, in this transaction).
    Returns (size, SHA-256 hex)."""
    digest, size, number = hashlib.sha256(), 0, 0
    while chunk := source.read(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"The file is larger than {limit} bytes")
        digest.update(chunk)
        row = FileChunk(file_id=file_id, number=number, data=chunk)
        session.add(row)
        session.flush()  # sent now: the session does not keep every chunk until commit
        session.expunge(row)
        number += 1
    return size, digest.hexdigest()


def read(file: File) -> Iterator[bytes]:
    """`file`'s bytes, chunk by chunk, each read in a transaction of its own (a slow reader
    holds no transaction open)."""
    if file.data is not None:
        yield file.data
        return
    number = 0
    while True:
        with session_scope() as session:
            chunk = session.scalar(
                select(FileChunk.data).where(
                    FileChunk.file_id == file.id, FileChunk.number == number
                )
            )
        if chunk is None:
            return
        yield chunk
        number += 1
