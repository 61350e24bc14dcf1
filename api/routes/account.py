"""The caller's own account."""

from fastapi import APIRouter

from api.deps import CurrentUser
from api.errors import PROBLEMS
from api.schemas.auth import AccountOut

router = APIRouter(prefix="/v1/account", tags=["auth"], responses=PROBLEMS)


@router.get("", response_model=AccountOut)
def get_account(user: CurrentUser) -> AccountOut:
    """Who the bearer token belongs to (Replicate's account object), and their role."""
    return AccountOut.model_validate(user)
