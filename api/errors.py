"""One error hierarchy, one handler, one problem+json shape (RFC 9457)."""

import logging
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


class Unprocessable(ApiError):
    status = 422
    title = "Unprocessable entity"


class TooManyRequests(ApiError):
    status = 429
    title = "Too many requests"


class ServiceUnavailable(ApiError):
    status = 503
    title = "Service unavailable"


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


def _validation_problem(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    malformed = next((e for e in errors if e["type"] == "json_invalid"), None)
    if malformed is not None:
        reason = malformed.get("ctx", {}).get("error", "invalid JSON")
        return problem(400, "Malformed JSON", f"The request body is not valid JSON: {reason}")
    invalid = []
    for error in errors:
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "Unknown field"
        invalid.append({"field": field_path(tuple(error["loc"])), "message": message})
    return problem(422, "Unprocessable entity", summarize(invalid), invalid_fields=invalid)


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
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            invalid_fields=exc.invalid_fields,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_problem(exc)

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
        return problem(exc.status_code, title, str(exc.detail), headers=headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(psycopg.OperationalError)  # the async pool's (api/database.py)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem(
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
        return problem(
            400,
            "Bad request",
            "The request contains data that cannot be stored (NUL bytes, invalid Unicode, NaN)",
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal server error", f"Unexpected error (request id {request_id})")
