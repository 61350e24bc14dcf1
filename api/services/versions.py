"""The version a create runs (by id, or a model's latest by `owner/name`), from the process's
cache: versions never change, and a model's latest is announced when it does
(db/repositories/cache_notices.py). Its input validator is compiled once, here."""

from dataclasses import dataclass
from datetime import datetime

from jsonschema import Draft202012Validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.cache import Cache
from api.errors import Unprocessable
from api.schemas.predictions import PredictionCreate
from api.services.inputs import input_validator
from api.services.result_cache import CacheRule
from db.file_inputs import file_fields
from db.repositories import models
from db.session import session_scope


@dataclass(frozen=True)
class Version:
    id: str
    hardware: str
    model_ref: str  # owner/name
    validator: Draft202012Validator
    model_type: str = ""  # a key of models.registry (text-generation, embeddings...)
    created_at: datetime | None = None
    cache: CacheRule | None = None  # None: the version answers nothing from the result cache
    file_fields: tuple[str, ...] = ()  # input fields that are files (db/file_inputs.py)


async def resolve(cache: Cache[Version], body: PredictionCreate) -> Version:
    """422 naming `version` or `model` when there is no such version, model or latest one."""
    key = f"version:{body.version}" if body.version is not None else f"model:{body.model}"
    found = cache.get(key)
    if found is None:
        generation = cache.generation
        found = await run_in_threadpool(_load, body)
        cache.put(key, found, generation)
    return found


def _load(body: PredictionCreate) -> Version:
    with session_scope() as session:
        return load(session, body)


def missing(body: PredictionCreate, reason: str = "No such model") -> Unprocessable:
    """The 422 for a version (or model) that does not exist, or no longer does."""
    if body.version is not None:
        return Unprocessable(
            f"No model version {body.version!r}",
            invalid_fields=[{"field": "version", "message": "No such model version"}],
        )
    return Unprocessable(
        f"{reason}: {body.model!r}", invalid_fields=[{"field": "model", "message": reason}]
    )


def load(session: Session, body: PredictionCreate) -> Version:
    if body.version is not None:
        row = models.get_version(session, id=body.version)
        if row is None:
            raise missing(body)
        version, model_ref = row
    else:
        assert body.model is not None
        owner, _, name = body.model.partition("/")
        model = models.get(session, owner=owner, name=name)
        if model is None or model.latest_version is None:
            raise missing(body, "No such model" if model is None else "Model has no versions")
        version, model_ref = model.latest_version, model.ref
    validator = input_validator(version.input_schema)
    cache = (
        CacheRule(version.model_type, version.cache_ttl_s, version.cache_shared)
        if version.cache_enabled
        else None
    )
    return Version(
        version.id,
        version.hardware,
        model_ref,
        validator,
        version.model_type,
        version.created_at,
        cache,
        file_fields(version.input_schema),
    )
