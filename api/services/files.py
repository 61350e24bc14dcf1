"""Files predictions produced, for their owner (or an admin)."""

from api.deps import Transaction, owner_scope
from api.errors import NotFound
from db.ids import is_id
from db.repositories import files
from db.tables import File, User


def get(tx: Transaction, user: User, file_id: str) -> File:
    """Another user's file, like a malformed or unknown id, is 404: its existence never leaks."""
    file = files.get(tx.session, id=file_id, owner_id=owner_scope(user)) if is_id(file_id) else None
    if file is None:
        raise NotFound(f"No file {file_id!r}")
    return file
