"""ASGI middleware: request ids, and the request-body size limit Starlette does not have."""

import secrets

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_for
from common import log_format

# Every answer is one caller's data (tokens, secrets, outputs): never kept by a cache (unless
# the route says otherwise, as file downloads do), sniffed into another type, framed, or
# leaking its URL as a referrer.
DEFAULT_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class RequestId:
    """Tag each request with an id (the client's X-Request-ID, or a new one) for logs and
    errors, and answer it in X-Request-ID, with the security headers. Plain ASGI: no task or
    stream per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = given.decode("latin-1")[:64] or secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        # Not reset: each request runs in an asyncio task of its own, so in its own context, and
        # uvicorn's access line (written as the response goes out, after this returns) keeps it.
        log_format.request_id.set(request_id)
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), header]
                present = {name.lower() for name, _ in headers}
                headers += [item for item in DEFAULT_HEADERS if item[0] not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimit:
    """413 for a body over `max_bytes` (or the limit `by_path` gives its exact path): by its
    Content-Length, or while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int, by_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_path = by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.max_bytes)
        detail = f"The request body is larger than {limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            answer = error_for(scope["path"], 413, "Payload too large", detail)
            await answer(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # FastAPI lets an HTTPException raised while reading the body through.
                raise HTTPException(413, detail)
            return message

        await self.app(scope, limited_receive, send)
