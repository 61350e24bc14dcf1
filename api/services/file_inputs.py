"""File inputs checked when a prediction is created (db/file_inputs.py says what they are):
a Quern file must exist, be the caller's and not have expired; a
`data:` URL must decode and be small enough; an http(s) URL must pass the SSRF guard. Each
refusal is a 422 naming the field. Run in the thread pool (a query, DNS lookups)."""

from collections.abc import Mapping
from typing import Any

from api.errors import Unprocessable
from api.settings import ApiSettings
from common import webhook_guard
from db.file_inputs import is_data_url, is_web_url, parse_data_url, quern_file_id, references
from db.repositories import files
from db.session import session_scope
from db.tables import User


def check(
    user: User, input: Mapping[str, Any], fields: tuple[str, ...], settings: ApiSettings
) -> None:
    invalid: list[dict[str, str]] = []
    wanted: dict[str, list[str]] = {}  # file id -> the paths that name it
    for path, value in references(input, fields):
        reason = None
        file_id = quern_file_id(value)
        if file_id is not None:
            wanted.setdefault(file_id, []).append(path)
        elif is_data_url(value):
            try:
                _, data = parse_data_url(value)
            except ValueError as exc:
                reason = str(exc)
            else:
                if len(data) > settings.max_data_url_bytes:
                    reason = (
                        f"A data: URL holds at most {settings.max_data_url_bytes} bytes; "
                        "upload larger files (POST /v1/files)"
                    )
        elif is_web_url(value):
            try:
                webhook_guard.check(value)
            except webhook_guard.RefusedUrl as exc:
                reason = f"Refused: {exc}"
        else:
            reason = "A file is a Quern file URL (POST /v1/files), a data: URL or an http(s) URL"
        if reason is not None:
            invalid.append({"field": f"input.{path}", "message": reason})
    if wanted:
        with session_scope() as session:
            found = files.find_inputs(session, ids=list(wanted))
        for file_id, paths in wanted.items():
            owner_id, expired = found.get(file_id, (None, False))
            if owner_id != user.id:
                reason = f"No file {file_id!r}"
            elif expired:
                reason = f"The file {file_id!r} has expired"
            else:
                continue
            invalid += [{"field": f"input.{path}", "message": reason} for path in paths]
    if invalid:
        summary = "; ".join(f"{item['field']}: {item['message']}" for item in invalid)
        raise Unprocessable(f"Invalid input: {summary}", invalid_fields=invalid)
