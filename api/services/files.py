"""Files predictions produced, for their owner (or an admin), or for a signed URL's bearer."""

from api.deps import SIGNED_URL_REFUSED, SignedUrl, Transaction, owner_scope
from api.errors import Forbidden, NotFound
from db.ids import is_id
from db.repositories import files
from db.signed_urls import get_url_signer
from db.tables import File, User


def get(tx: Transaction, reader: User | SignedUrl, file_id: str) -> File:
    """With a token, another user's file, like a malformed or unknown id, is 404: its
    existence never leaks. With a signed URL, one that does not grant this file as an output of
    the prediction its row names is 403, the same 403 for a file that does not exist."""
    if isinstance(reader, SignedUrl):
        file = files.get(tx.session, id=file_id) if is_id(file_id) else None
        signer = get_url_signer()
        if file is None or not signer.check_file(
            file.id, file.prediction_id, reader.expires, reader.signature
        ):
            raise Forbidden(SIGNED_URL_REFUSED)
        return file
    file = (
        files.get(tx.session, id=file_id, owner_id=owner_scope(reader)) if is_id(file_id) else None
    )
    if file is None:
        raise NotFound(f"No file {file_id!r}")
    return file
