"""The caller's own account."""

from fastapi import APIRouter

from api.deps import CurrentUser
from api.errors import PROBLEMS
from api.schemas.auth import UserOut

router = APIRouter(prefix="/v1/account", tags=["auth"], responses=PROBLEMS)


@router.get("", response_model=UserOut)
def get_account(user: CurrentUser) -> UserOut:
    """Who the bearer token belongs to, and their role."""
    return UserOut.model_validate(user)
