"""ASGI middleware: request ids, and the request-body size limit Starlette does not have."""

import secrets
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem
from db import log_format


async def request_id_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Tag each request with an id (the client's X-Request-ID, or a new one) for logs and errors."""
    request_id = request.headers.get("x-request-id", "")[:64] or secrets.token_hex(8)
    request.state.request_id = request_id
    # Not reset: each request runs in an asyncio task of its own, so in its own context, and
    # uvicorn's access line (written as the response goes out, after this returns) keeps it.
    log_format.request_id.set(request_id)
    response = await call_next(request)
    response.headers["X-Request-ID"] = request_id
    return response


class BodySizeLimit:
    """413 for a body over `max_bytes`: by its Content-Length, or while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"The request body is larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await problem(413, "Payload too large", self.detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI lets an HTTPException raised while reading the body through.
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, limited_receive, send)
