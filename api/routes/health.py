"""Liveness, readiness and metrics: for load balancers, orchestrators and Prometheus."""

import time
from collections.abc import Callable

import redis
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from api import metrics
from api.errors import PROBLEMS
from api.ops_access import is_operator, require_operator
from api.queue import get_client
from api.settings import get_api_settings
from db.session import session_scope

router = APIRouter(tags=["ops"])


class Check(BaseModel):
    ok: bool
    ms: float
    detail: str


class Readiness(BaseModel):
    status: str  # "ready" or "not ready"
    checks: dict[str, Check] | None = None  # operators only: error texts are internal


@router.get("/health")
def health() -> dict[str, str]:
    """The process is up. Touches nothing else."""
    return {"status": "ok"}


def _postgres() -> str:
    with session_scope() as session:
        session.execute(text("SELECT 1"))
    return "reachable"


def _redis() -> str:
    client = redis.Redis.from_url(
        get_api_settings().redis_url, socket_connect_timeout=1, socket_timeout=1
    )
    try:
        client.ping()
    finally:
        client.close()
    return "reachable"


def _workers() -> str:
    """Asks the workers over the broker; the first answer is enough."""
    replies = get_client().control.ping(timeout=1.0, limit=1)
    if not replies:
        raise RuntimeError("no worker answered within 1 s")
    return f"{len(replies)} answered"


def _check(probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}"[:300], False
    return Check(ok=ok, ms=round((time.perf_counter() - started) * 1000, 1), detail=detail)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Some dependency is down"}},
)
def ready(request: Request) -> JSONResponse:
    """PostgreSQL and Redis reachable, and at least one worker answering: 200, else 503. Needs
    no token, like /health; each check's own result (time, error) goes to operators only
    (api/ops_access.py)."""
    checks = {"postgres": _check(_postgres), "redis": _check(_redis)}
    if checks["redis"].ok:  # without the broker, asking the workers could only hang
        checks["workers"] = _check(_workers)
    else:
        checks["workers"] = Check(ok=False, ms=0.0, detail="not asked: Redis is unreachable")
    ok = all(check.ok for check in checks.values())
    details = checks if is_operator(request) else None
    body = Readiness(status="ready" if ok else "not ready", checks=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_operator)],
    responses={200: {"content": {"text/plain": {}}}, 401: PROBLEMS[401], 403: PROBLEMS[403]},
)
def prometheus_metrics() -> Response:
    """Prometheus exposition: requests, latency, predictions created and canceled, queue depth
    per model. Operators only (api/ops_access.py). Workers serve their own (batches, retries,
    load times) on their metrics port."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
