"""Files: those predictions produced (images, stored whole) and those users uploaded (their
bytes in db/repositories/file_bytes.py), with their size and SHA-256."""

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from db.ids import new_id
from db.repositories.predictions import seconds
from db.tables import File


def create(
    session: Session,
    *,
    owner_id: str,
    prediction_id: str,
    content_type: str,
    data: bytes,
    id: str | None = None,
    flush: bool = True,
) -> File:
    """`id` may be chosen beforehand (the output names the file's URL before it is stored)."""
    file = File(
        id=id or new_id(),
        owner_id=owner_id,
        prediction_id=prediction_id,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
    )
    session.add(file)
    if flush:
        session.flush()
    return file


def get(session: Session, *, id: str, owner_id: str | None = None) -> File | None:
    """Owner-scoped when owner_id is given: another user's file does not exist."""
    query = select(File).where(File.id == id)
    if owner_id is not None:
        query = query.where(File.owner_id == owner_id)
    return session.scalars(query).one_or_none()


def create_upload(
    session: Session,
    *,
    owner_id: str,
    content_type: str,
    filename: str | None,
    metadata: dict[str, Any],
    ttl_s: int,
) -> File:
    """An upload's row, its size and checksum still to be set (after its bytes are written)."""
    file = File(
        owner_id=owner_id,
        prediction_id=None,
        content_type=content_type,
        size=0,
        sha256="",
        filename=filename,
        file_metadata=metadata,
        expires_at=func.now() + seconds(ttl_s),
    )
    session.add(file)
    session.flush()
    return file


def list_uploads(
    session: Session, *, owner_id: str, limit: int, before: tuple[datetime, str] | None
) -> list[File]:
    """The owner's unexpired uploads, newest first, those older than `before` (created_at, id)."""
    query = select(File).where(
        File.owner_id == owner_id,
        File.prediction_id.is_(None),
        File.expires_at > func.now(),
    )
    if before is not None:
        query = query.where(tuple_(File.created_at, File.id) < tuple_(*before))
    query = query.order_by(File.created_at.desc(), File.id.desc()).limit(limit)
    return list(session.scalars(query))


def find_inputs(session: Session, *, ids: list[str]) -> dict[str, tuple[str, bool]]:
    """Of the files `ids`: id -> (owner id, expired), for checking file inputs."""
    rows = session.execute(
        select(File.id, File.owner_id, File.expires_at <= func.now()).where(File.id.in_(ids))
    )
    return {id: (owner_id, bool(expired)) for id, owner_id, expired in rows}


def delete(session: Session, *, file: File) -> None:
    session.execute(sa_delete(File).where(File.id == file.id))


def delete_expired(session: Session, *, limit: int = 500) -> int:
    """Remove up to `limit` expired uploads (their chunks go with them). Returns how many."""
    expired = (
        select(File.id)
        .where(File.expires_at <= func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(sa_delete(File).where(File.id.in_(expired.scalar_subquery())))
    return result.rowcount  # type: ignore[attr-defined,no-any-return]


def is_expired(file: File) -> bool:
    return file.expires_at is not None and file.expires_at <= datetime.now(UTC)
