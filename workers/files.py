"""File outputs (models.base.FileOutput) become File rows and URLs, as an outcome is recorded.

Runs in the recording transaction, before the output is checked, stored and published, so
only URLs ever reach the prediction, its events and webhooks. Files are written only for an
output that will be stored, of an attempt that still runs its prediction.
"""

import json
import re
from typing import Any

import numpy as np
import orjson
from sqlalchemy.orm import Session

from db.ids import new_id
from db.repositories import files, predictions
from db.repositories.predictions import Claim
from db.storable import MAX_DEPTH, unstorable
from models.base import FileOutput
from workers.settings import get_worker_settings

# type/subtype (RFC 6838 names): fits the column and is safe to send back as a header.
CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,48}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,48}"
)


def encode(output: Any) -> str | None:
    """`output` as JSON text when it plainly holds no file and nothing PostgreSQL refuses (the
    usual case, checked at C speed); None when it needs `store`."""
    if isinstance(output, np.ndarray):
        return _encode_array(output)
    try:
        text = json.dumps(output, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # a FileOutput, NaN, not JSON at all
        return None
    if "\\u0000" in text or not (text.isascii() or _is_utf8(text)):
        return None
    # Could be nested past what the API can serialize back: `store` measures it (brackets
    # inside strings count here too, which only sends such an output the slower way).
    if text.count("[") + text.count("{") > MAX_DEPTH:
        return None
    return text


def _encode_array(array: np.ndarray[Any, Any]) -> str | None:
    """A numpy array of numbers in one C call (orjson): float32 values in their shortest exact
    form, where Python's repr of the same value as a float takes 17 digits and 25x the time."""
    if array.dtype.kind not in "fiub" or array.ndim > MAX_DEPTH:
        return None  # objects, strings, complex: the slow path says what is wrong
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return None  # NaN or infinity: PostgreSQL refuses them, `store` names where
    return orjson.dumps(np.ascontiguousarray(array), option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def store(session: Session, *, claim: Claim, output: Any) -> tuple[Any, str | None]:
    """(`output` with every FileOutput replaced by its URL, None), or (None, why it cannot be
    stored: a bad file, too many bytes, or a value PostgreSQL refuses)."""
    settings = get_worker_settings()
    found: list[tuple[str, FileOutput]] = []

    def replace(value: Any) -> Any:
        if isinstance(value, FileOutput):
            file_id = new_id()
            found.append((file_id, value))
            return f"{settings.public_url}/v1/files/{file_id}"
        if isinstance(value, list | tuple):
            return [replace(item) for item in value]
        if isinstance(value, dict):
            return {key: replace(item) for key, item in value.items()}
        if isinstance(value, np.ndarray | np.generic):  # arrays and numpy scalars
            return replace(value.tolist())
        return value

    replaced = replace(output)
    bad_type = next(
        (f.content_type for _, f in found if not CONTENT_TYPE.fullmatch(f.content_type)), None
    )
    if bad_type is not None:
        return None, f"The model returned a file with an invalid content type {bad_type[:100]!r}"
    total = sum(len(file.data) for _, file in found)
    if total > settings.max_output_file_bytes:
        limit = settings.max_output_file_bytes
        return None, f"The model's files total {total} bytes; the limit is {limit}"
    problems = unstorable(replaced, "output")
    if problems:
        path, reason = problems[0]
        return None, f"The model returned an unstorable value at {path}: {reason}"
    if not found:
        return replaced, None
    if predictions.lock_attempt(session, claim=claim):
        for file_id, file in found:
            files.create(
                session,
                id=file_id,
                owner_id=claim.owner_id,
                prediction_id=claim.id,
                content_type=file.content_type,
                data=file.data,
                flush=False,  # one INSERT for them all, at the status update's flush
            )
    return replaced, None
