"""Replicate's hardware list and model collections, for a registry of one installation: the
hardware classes workers serve, and a few fixed collections computed from the models."""

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import NotFound
from api.schemas.models import (
    CollectionOut,
    CollectionPage,
    CollectionSummary,
    HardwareOut,
    ModelOut,
)
from api.services import models
from db.tables import Hardware
from models.registry import CUSTOM

HARDWARE_NAMES = {Hardware.CPU: "CPU", Hardware.GPU: "GPU"}


def list_hardware() -> list[HardwareOut]:
    """Every class a version can ask for (`hardware`): each has its own workers' queue."""
    return [HardwareOut(name=HARDWARE_NAMES[sku], sku=sku) for sku in Hardware]


@dataclass(frozen=True)
class Collection:
    slug: str
    name: str
    description: str
    includes: Callable[[ModelOut], bool]


def _of_type(model_type: str) -> Callable[[ModelOut], bool]:
    def includes(model: ModelOut) -> bool:
        return model.latest_version is not None and model.latest_version.model_type == model_type

    return includes


def _typed(model_type: str, name: str, what: str) -> Collection:
    return Collection(
        model_type, name, f"Models whose latest version {what}.", _of_type(model_type)
    )


COLLECTIONS = (
    Collection(
        "official",
        "Official models",
        "The models that ship with Quern (owned by its `quern` account).",
        lambda model: model.is_official,
    ),
    _typed("text-generation", "Text generation", "generates text (`text-generation`)"),
    _typed("embeddings", "Embeddings", "turns text into a vector (`embeddings`)"),
    _typed("text-to-image", "Text to image", "draws images from a prompt (`text-to-image`)"),
    _typed("text-classification", "Text classification", "labels text (`text-classification`)"),
    _typed(
        "image-classification", "Image classification", "labels images (`image-classification`)"
    ),
    _typed("image-to-text", "Image to text", "describes images in text (`image-to-text`)"),
    _typed(CUSTOM, "Custom models", "runs a class of its own (`custom`)"),
)
_BY_SLUG = {collection.slug: collection for collection in COLLECTIONS}


def list_collections() -> CollectionPage:
    """Every collection (one page), without its models, as Replicate lists them."""
    results = [CollectionSummary(name=c.name, slug=c.slug, description=c.description)
               for c in COLLECTIONS]  # fmt: skip
    return CollectionPage(next=None, previous=None, results=results)


def get_collection(session: Session, slug: str, base_url: str) -> CollectionOut:
    """The collection with its models, ordered as `GET /v1/models` orders them."""
    collection = _BY_SLUG.get(slug)
    if collection is None:
        raise NotFound(f"No collection {slug!r}")
    every = models.list_models(session, base_url).results
    return CollectionOut(
        name=collection.name,
        slug=collection.slug,
        description=collection.description,
        models=[model for model in every if collection.includes(model)],
    )
