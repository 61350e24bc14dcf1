"""The FastAPI application: `uvicorn api.main:app`."""

import logging
import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from api.errors import install_error_handlers
from api.routes import auth, health, models, predictions
from api.settings import get_api_settings


async def request_id_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Tag each request with an id (the client's X-Request-ID, or a new one) for logs and errors."""
    request_id = request.headers.get("x-request-id", "")[:64] or secrets.token_hex(8)
    request.state.request_id = request_id
    response = await call_next(request)
    response.headers["X-Request-ID"] = request_id
    return response


def create_app() -> FastAPI:
    get_api_settings()  # refuse to start on bad settings (e.g. the default secret in production)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = FastAPI(
        title="Quern",
        version="0.1.0",
        description="Self-hosted inference jobs: create a prediction, poll it, get the output.",
    )
    app.middleware("http")(request_id_middleware)
    install_error_handlers(app)
    for module in (health, auth, models, predictions):
        app.include_router(module.router)
    return app


app = create_app()
