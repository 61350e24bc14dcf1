"""The model registry."""

from fastapi import APIRouter

from api.deps import CurrentUser, TransactionDep
from api.schemas.models import ModelPage
from api.services import models

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelPage)
def list_models(tx: TransactionDep, user: CurrentUser) -> ModelPage:
    """Every model with its latest version and input schema."""
    return models.list_models(tx.session)
