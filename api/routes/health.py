"""Liveness."""

from fastapi import APIRouter

router = APIRouter(tags=["ops"])


@router.get("/health")
def health() -> dict[str, str]:
    """The process is up. Touches nothing else."""
    return {"status": "ok"}
