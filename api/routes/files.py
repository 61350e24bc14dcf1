"""Files predictions produced (images), at the URLs their outputs hold."""

import mimetypes

from fastapi import APIRouter, Response

from api.deps import Reader, TransactionDep
from api.errors import PROBLEMS
from api.services import files

BINARY = {"schema": {"type": "string", "format": "binary"}}
HEADERS = {
    "ETag": "The file's SHA-256, quoted",
    "Cache-Control": "private, max-age=86400: a file never changes",
    "Content-Disposition": 'inline; filename="<id>.<extension>"',
    "X-Content-Type-Options": "nosniff: the stored type is the only one",
}

router = APIRouter(prefix="/v1/files", tags=["files"], responses=PROBLEMS)


@router.get(
    "/{file_id}",
    response_class=Response,
    responses={
        200: {
            "description": "The file's bytes, with the type the model gave it",
            "content": {
                kind: BINARY
                for kind in ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
            },
            "headers": {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in HEADERS.items()
            },
        }
    },
)
def get_file(file_id: str, tx: TransactionDep, reader: Reader) -> Response:
    """A file one of your predictions produced (its output holds this URL); anyone else's is
    404. The URL as a prediction object gives it (with `expires` and `signature`) needs no
    token: one whose signature is tampered, expired or another file's is 403."""
    file = files.get(tx, reader, file_id)
    extension = mimetypes.guess_extension(file.content_type) or ".bin"
    return Response(
        file.data,
        media_type=file.content_type,
        headers={
            "ETag": f'"{file.sha256}"',
            "Cache-Control": "private, max-age=86400",
            "Content-Disposition": f'inline; filename="{file.id}{extension}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
