"""The FastAPI application: `uvicorn api.main:app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api.database import open_pool
from api.errors import install_error_handlers
from api.finished_reads import FinishedReads
from api.memory import trimming
from api.metrics import RequestMetrics
from api.middleware import BodySizeLimit, RequestId
from api.queue import Publisher
from api.routes import (
    account,
    auth,
    catalog,
    console,
    files,
    health,
    models,
    openai_compat,
    predictions,
    tokens,
    webhooks,
)
from api.settings import get_api_settings
from api.status_listener import status_listener
from common.log_format import configure_logging
from common.webhook_guard import get_guard_settings
from db.signed_urls import get_url_signer


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The process's PostgreSQL pool (and its coalesced reads of finished predictions),
    publisher thread and LISTEN connection; each request finds all but the last in
    `request.state`. At shutdown the publisher sends what is left.
    Meanwhile freed memory goes back to the OS now and then (api/memory.py)."""
    listener = status_listener()
    listener.start()
    pool = await open_pool()
    publisher = Publisher()
    try:
        async with trimming(get_api_settings().malloc_trim_interval_s):
            yield {"pool": pool, "reads": FinishedReads(pool), "publisher": publisher}
    finally:
        publisher.close()
        await pool.close()
        await listener.stop()


def create_app() -> FastAPI:
    settings = get_api_settings()  # refuses to start on bad settings (the default secret...)
    get_guard_settings()  # a bad QUERN_WEBHOOK_ALLOWED_NETWORKS too, not a 500 per webhook
    get_url_signer()  # and a bad QUERN_SIGNED_URL_*, not a 500 per prediction
    configure_logging(logging.INFO)  # JSON lines (QUERN_LOG_FORMAT), uvicorn's included
    app = FastAPI(
        title="Quern",
        version="0.1.0",
        description="Self-hosted inference jobs: create a prediction, poll it, get the output.",
        lifespan=lifespan,
    )
    # The last added runs first: metrics see every answer, and a 413 carries its request id.
    # Uploads (a file, its form fields, the multipart framing) have their own, larger limit.
    uploads = {"/v1/files": settings.max_file_bytes + 64 * 1024}
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, by_path=uploads)
    app.add_middleware(RequestId)
    app.add_middleware(RequestMetrics)
    install_error_handlers(app)
    # Routes are matched in order, 5-10 µs a router: the hot ones (creating and reading
    # predictions, by version, by model, OpenAI-shaped) first.
    app.include_router(predictions.router)
    app.include_router(predictions.model_router)
    app.include_router(openai_compat.router)
    for module in (health, auth, account, tokens, models, catalog, files, webhooks, console):
        app.include_router(module.router)
    return app


app = create_app()
