"""One error hierarchy, one handler, one problem+json shape (RFC 9457)."""

import logging
import re
from typing import Any, ClassVar

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# The problem+json body, for the OpenAPI document: every route lists the errors it may answer.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "invalid_fields": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_PROBLEM_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, bad header)",
    401: "Missing, invalid, expired or revoked token",
    403: "Not allowed for your role, or a signed URL that is tampered, expired or another's",
    404: "No such object (or it is not yours)",
    409: "Conflicts with the current state (a duplicate, a request still in progress)",
    413: "Request body too large",
    422: "Invalid fields, each named in `invalid_fields`",
    429: "Rate limit or in-flight limit reached: see Retry-After",
    503: "Overloaded or a dependency is down: see Retry-After",
}
PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}
    for status, text in _PROBLEM_DESCRIPTIONS.items()
}


# The OpenAI-compatible API (api/routes/openai.py) answers errors in OpenAI's shape instead:
# {"error": {"message", "type", "param", "code"}}, 422s as 400s (OpenAI has no 422).
OPENAI_PREFIX = "/openai/v1"
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_OPENAI_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, or a parameter refused (named in `param`)",
    401: "Missing, invalid, expired or revoked token (`code`: `invalid_api_key`)",
    404: "No such model (`code`: `model_not_found`), or it cannot serve this endpoint",
    408: "Not finished in QUERN_OPENAI_TIMEOUT_S: the prediction was canceled (`code`: `timeout`)",
    413: "Request body too large",
    429: "Rate limit or in-flight limit reached (`code`: `rate_limit_exceeded`): see Retry-After",
    503: "Overloaded or a dependency is down: see Retry-After",
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": OPENAI_ERROR_SCHEMA}}}
    for status, text in _OPENAI_DESCRIPTIONS.items()
}
_OPENAI_TYPES = {401: "invalid_request_error", 403: "permission_error", 408: "timeout",
                 429: "requests"}  # fmt: skip
_OPENAI_CODES = {401: "invalid_api_key", 408: "timeout", 429: "rate_limit_exceeded",
                 503: "service_unavailable"}  # fmt: skip


def is_openai(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error as OpenAI's API answers it; `type` and `code` default by status."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    error = {
        "message": message,
        "type": type or _OPENAI_TYPES.get(status, default_type),
        "param": param,
        "code": code or _OPENAI_CODES.get(status),
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


class OpenAIError(Exception):
    """An error of the OpenAI-compatible API, with OpenAI's `param` and `code`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return openai_error(
            self.status, self.message, param=self.param, code=self.code, headers=self.headers
        )


class ApiError(Exception):
    """An expected outcome with its HTTP status. `detail` is safe to show the client."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        invalid_fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.invalid_fields = invalid_fields
        self.headers = headers


class BadRequest(ApiError):
    status = 400
    title = "Bad request"


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    title = "Not found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Payload too large"


class Unprocessable(ApiError):
    status = 422
    title = "Unprocessable entity"

    @classmethod
    def field(cls, name: str, reason: str) -> "Unprocessable":
        """One invalid field: "name: reason", with the field named in `invalid_fields`."""
        return cls(f"{name}: {reason}", invalid_fields=[{"field": name, "message": reason}])


class TooManyRequests(ApiError):
    status = 429
    title = "Too many requests"


class ServiceUnavailable(ApiError):
    status = 503
    title = "Service unavailable"


def error_for(
    path: str,
    status: int,
    title: str,
    detail: str,
    *,
    invalid_fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape of the API `path` belongs to: problem+json, or OpenAI's (where a
    422 is a 400 whose `param` is the first invalid field)."""
    if not is_openai(path):
        return problem(status, title, detail, invalid_fields=invalid_fields, headers=headers)
    param = invalid_fields[0]["field"] if invalid_fields else None
    return openai_error(400 if status == 422 else status, detail, param=param, headers=headers)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    invalid_fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    if invalid_fields is not None:
        body["invalid_fields"] = invalid_fields
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def summarize(invalid_fields: list[dict[str, str]]) -> str:
    """`detail` for a 422: every field and what is wrong with it, on one line."""
    return "; ".join(f"{item['field']}: {item['message']}" for item in invalid_fields)


def field_path(loc: tuple[int | str, ...]) -> str:
    """('body', 'input', 'text') -> 'input.text'; list indexes as [0]."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or str(loc[0] if loc else "body")


# Where pydantic names the branch of a union (`str`, `list[str]`, `TextPart`...) in an
# error's location: not a field. The OpenAI API names the field that holds the union.
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _openai_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    for at, part in enumerate(loc):
        if at and isinstance(part, str) and (not _FIELD_NAME.match(part) or part in _TYPE_NAMES):
            return loc[:at]
    return loc


def _validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
    path = request.url.path
    errors = exc.errors()
    malformed = next((e for e in errors if e["type"] == "json_invalid"), None)
    if malformed is not None:
        reason = malformed.get("ctx", {}).get("error", "invalid JSON")
        detail = f"The request body is not valid JSON: {reason}"
        return error_for(path, 400, "Malformed JSON", detail)
    invalid: list[dict[str, str]] = []
    for error in errors:
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "Unknown field"
        loc = tuple(error["loc"])
        item = {
            "field": field_path(_openai_loc(loc) if is_openai(path) else loc),
            "message": message,
        }
        if item not in invalid:
            invalid.append(item)
    return error_for(path, 422, "Unprocessable entity", summarize(invalid), invalid_fields=invalid)


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405: every method some route takes on this path. Starlette's
    names the first matching route's only, and `GET /v1/tokens` and `POST /v1/tokens` are two
    routes. Each method is asked of the router as a request would be (included routers are not
    flat lists of routes)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_for(
            request.url.path,
            exc.status,
            exc.title,
            exc.detail,
            invalid_fields=exc.invalid_fields,
            headers=exc.headers,
        )

    @app.exception_handler(OpenAIError)
    async def openai_api_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_problem(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            400: "Bad request",
            404: "Not found",
            405: "Method not allowed",
            413: "Payload too large",
        }
        title = titles.get(exc.status_code, "Error")
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            headers = (headers or {}) | {"Allow": allowed_methods(request)}
        detail = str(exc.detail)
        if is_openai(request.url.path) and exc.status_code in (404, 405):
            detail = f"{title}: {request.method} {request.url.path}"
        return error_for(request.url.path, exc.status_code, title, detail, headers=headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(psycopg.OperationalError)  # the async pool's (api/database.py)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_for(
            request.url.path,
            503,
            "Service unavailable",
            "The database is unreachable. Retry shortly.",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DataError)
    @app.exception_handler(psycopg.DataError)
    async def unstorable_data(request: Request, exc: Exception) -> JSONResponse:
        # A safety net: validation should have caught it (NUL bytes, bad Unicode, NaN).
        log.warning("database refused data on %s %s: %s", request.method, request.url.path, exc)
        return error_for(
            request.url.path,
            400,
            "Bad request",
            "The request contains data that cannot be stored (NUL bytes, invalid Unicode, NaN)",
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        detail = f"Unexpected error (request id {request_id})"
        return error_for(request.url.path, 500, "Internal server error", detail)
