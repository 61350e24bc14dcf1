"""Files: uploads (Replicate's Files API) and the files predictions produced."""

import mimetypes
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import StreamingResponse

from api.deps import CurrentUser, Reader, SettingsDep, TransactionDep, request_base_url
from api.errors import PROBLEMS
from api.schemas.base import Matching, NeverNull
from api.schemas.files import FileOut, FilePage
from api.services import files
from db.tables import File as StoredFile

BINARY = {"schema": {"type": "string", "format": "binary"}}
HEADERS = {
    "ETag": "The file's SHA-256, quoted",
    "Cache-Control": "private, max-age=86400: a file never changes",
    "Content-Disposition": 'inline; filename="<name>"',
    "X-Content-Type-Options": "nosniff: the stored type is the only one",
    "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; media-src 'self': "
    "a file opened in a browser (an uploaded HTML page, say) runs no script, with no origin",
}
# A file is anyone's bytes, served from the console's origin: opened in a browser it must not
# run as a page of this origin (api/routes/console.py).
FILE_POLICY = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'"
BYTES_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes, with its content type",
        "content": {
            kind: BINARY
            for kind in ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
        },
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in HEADERS.items()
        },
    }
}

router = APIRouter(prefix="/v1/files", tags=["files"], responses=PROBLEMS)


@router.post("", status_code=201, response_model=FileOut)
def create_file(
    content: Annotated[UploadFile, File(description="The file's bytes.")],
    request: Request,
    tx: TransactionDep,
    user: CurrentUser,
    settings: SettingsDep,
    filename: Annotated[str | None, Form(max_length=255), NeverNull()] = None,
    type: Annotated[
        Annotated[str, Matching(files.MEDIA_TYPE_PATTERN, "Not a media type like image/png")]
        | None,
        Form(description="The media type; by default what the part says, or the bytes."),
        NeverNull(),
    ] = None,
    metadata: Annotated[str | None, Form(description="A JSON object."), NeverNull()] = None,
) -> FileOut:
    """Upload a file (multipart: `content`, optional `filename`, `type`, `metadata`) to pass
    as a file input: its `urls.get`. Its type is checked against its bytes; it expires after
    QUERN_FILE_TTL_S (24 h by default)."""
    return files.upload(
        tx,
        user,
        content.file,
        declared_type=type or files.media_type(content.content_type),
        filename=filename or content.filename,
        metadata=metadata,
        settings=settings,
        base_url=request_base_url(request),
    )


@router.get("", response_model=FilePage)
def list_files(
    request: Request,
    tx: TransactionDep,
    user: CurrentUser,
    settings: SettingsDep,
    cursor: Annotated[
        Annotated[str, Matching(files.CURSOR_PATTERN, "Invalid cursor: pass back `next` as given")]
        | None,
        Query(description="From a page's `next` URL: pass it back as given."),
        NeverNull(),
    ] = None,
    page_size: Annotated[int | None, Query(ge=1, le=100), NeverNull()] = None,
) -> FilePage:
    """Your uploads that have not expired, newest first."""
    size = min(page_size or settings.page_size_default, settings.page_size_max)
    return files.list_uploads(tx, user, cursor, size, request_base_url(request))


@router.get(
    "/{file_id}",
    response_model=FileOut,
    responses={200: {"content": {"application/json": {}, **BYTES_RESPONSE[200]["content"]}}},
)
def get_file(file_id: str, request: Request, tx: TransactionDep, reader: Reader) -> Response:
    """An upload: its object (as Replicate answers). A file a prediction produced (its output
    holds this URL): its bytes. Your own only; anyone else's is 404. The URL as a prediction
    object gives it (with `expires` and `signature`) needs no token: one whose signature is
    tampered, expired or another file's is 403."""
    file = files.get(tx, reader, file_id)
    if file.prediction_id is None:
        out = files.to_out(file, request_base_url(request))
        return Response(out.model_dump_json(), media_type="application/json")
    return _bytes(file)


@router.get("/{file_id}/download", response_class=StreamingResponse, responses=BYTES_RESPONSE)
def download_file(file_id: str, tx: TransactionDep, reader: Reader) -> StreamingResponse:
    """The file's bytes, streamed: an upload, or a file a prediction produced."""
    return _bytes(files.get(tx, reader, file_id))


@router.delete("/{file_id}", status_code=204, response_class=Response)
def delete_file(file_id: str, tx: TransactionDep, user: CurrentUser) -> Response:
    """Delete an upload now (predictions that used it keep their input's URL). A prediction's
    output is kept with the prediction: 409."""
    files.delete(tx, user, file_id)
    return Response(status_code=204)


def _bytes(file: StoredFile) -> StreamingResponse:
    extension = mimetypes.guess_extension(file.content_type) or ".bin"
    name = file.filename or f"{file.id}{extension}"
    plain = "".join(c for c in name if c.isascii() and c.isprintable() and c not in '"\\')
    return StreamingResponse(
        files.content(file),
        media_type=file.content_type,
        headers={
            "Content-Length": str(file.size),
            "ETag": f'"{file.sha256}"',
            "Cache-Control": "private, max-age=86400",
            "Content-Disposition": f"inline; filename=\"{plain}\"; filename*=UTF-8''{quote(name)}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": FILE_POLICY,
        },
    )
