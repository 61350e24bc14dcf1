"""Replicate's hardware list and model collections (api/services/catalog.py)."""

from fastapi import APIRouter

from api.deps import BaseUrl, CurrentUser, TransactionDep
from api.errors import PROBLEMS
from api.schemas.models import CollectionOut, CollectionPage, HardwareOut
from api.services import catalog

router = APIRouter(prefix="/v1", responses=PROBLEMS)


@router.get("/hardware", response_model=list[HardwareOut], tags=["hardware"])
async def list_hardware(user: CurrentUser) -> list[HardwareOut]:
    """The hardware a version may run on (its `hardware`): `cpu` and `gpu`."""
    return catalog.list_hardware()


@router.get("/collections", response_model=CollectionPage, tags=["collections"])
async def list_collections(user: CurrentUser) -> CollectionPage:
    """Every collection, without its models: `official` (the models that ship with Quern) and
    one per model type (`text-generation`, `embeddings`, `text-to-image`, `custom`), by the
    type of each model's latest version."""
    return catalog.list_collections()


@router.get("/collections/{slug}", response_model=CollectionOut, tags=["collections"])
def get_collection(
    slug: str,
    base_url: BaseUrl,
    tx: TransactionDep,
    user: CurrentUser,
) -> CollectionOut:
    """One collection with its models (each as `GET /v1/models/{owner}/{name}` shows it);
    an unknown slug is 404."""
    return catalog.get_collection(tx.session, slug, base_url)
