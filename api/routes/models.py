"""The model registry: anyone signed in reads it, administrators add to it."""

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import AdminUser, CurrentUser, TransactionDep
from api.errors import PROBLEMS
from api.schemas.models import MODEL_NAME_PATTERN, ModelCreate, ModelOut, ModelPage
from api.services import models

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROBLEMS)


@router.get("", response_model=ModelPage)
def list_models(tx: TransactionDep, user: CurrentUser) -> ModelPage:
    """Every model with its latest version and input schema."""
    return models.list_models(tx.session)


@router.post("", status_code=201, response_model=ModelOut)
def create_model(body: ModelCreate, tx: TransactionDep, admin: AdminUser) -> ModelOut:
    """Register a model as `<you>/<name>` (administrators only); add versions to it next."""
    return models.create_model(tx.session, admin, body)


@router.get("/{owner}/{name}", response_model=ModelOut)
def get_model(
    owner: Annotated[str, Path(max_length=39)],
    name: Annotated[str, Path(pattern=MODEL_NAME_PATTERN)],
    tx: TransactionDep,
    user: CurrentUser,
) -> ModelOut:
    """One model with its latest version."""
    return models.get_model(tx.session, owner, name)
