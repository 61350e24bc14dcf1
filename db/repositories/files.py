"""Files predictions produced (images): stored whole, with their size and SHA-256."""

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.ids import new_id
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
