"""The model registry as clients see it. Weights references stay on the server."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    computed_field,
    field_validator,
)

from api.schemas.base import RequestBody, ResponseBody
from api.services.cog_schema import COG_VERSION, openapi_schema
from api.services.inputs import check_input_schema
from models.registry import CLASS_PATH_PATTERN, CUSTOM, FILE_OUTPUTS, MODEL_TYPES

MODEL_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$"


def _public_only(visibility: Any) -> Any:
    if visibility == "private":  # Replicate's other value: say why, not just "public"
        raise ValueError("Quern has no private models: every model is visible to all users")
    return visibility


Link = Annotated[str, StringConstraints(max_length=1024, pattern=r"^https?://[^\x00\s]+$")]


class ModelCreate(RequestBody):
    """Replicate's body; what Quern has no use for yet is accepted and said so below."""

    owner: str | None = Field(
        default=None,
        max_length=39,
        description="Your username, if given (Replicate's clients "
        "send it): models are created under the caller's account only.",
    )
    name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        description="Letters, digits, `.`, `_`, `-`; 1-100 characters. The model is "
        "`<your username>/<name>`.",
    )
    description: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")
    visibility: Literal["public"] = Field(
        default="public",
        description="`public` only: every signed-in user can see and run every model.",
    )
    hardware: str | None = Field(
        default=None,
        pattern=r"^(cpu|gpu[a-z0-9-]*)$",
        description="Accepted and ignored: Quern sets hardware (`cpu` or `gpu`) on each version.",
    )
    github_url: Link | None = None
    paper_url: Link | None = None
    license_url: Link | None = None
    cover_image_url: Link | None = None

    @field_validator("visibility", mode="before")
    @classmethod
    def public_only(cls, visibility: Any) -> Any:
        return _public_only(visibility)


class ModelUpdate(RequestBody):
    """Replicate's `PATCH` body: only the fields given change. Replicate's `readme` and
    `weights_url` are not kept by Quern (422, unknown fields)."""

    description: str | None = Field(
        default=None, max_length=2000, pattern=r"^[^\x00]*$", description="null clears it."
    )
    visibility: Literal["public"] = Field(
        default="public",
        description="`public` only: every signed-in user can see and run every model.",
    )
    github_url: Link | None = Field(default=None, description="null clears it; likewise below.")
    paper_url: Link | None = None
    license_url: Link | None = None
    cover_image_url: Link | None = None

    @field_validator("visibility", mode="before")
    @classmethod
    def public_only(cls, visibility: Any) -> Any:
        return _public_only(visibility)


ModelType = Literal[tuple([*MODEL_TYPES, CUSTOM])]  # type: ignore[valid-type]


class CacheSettings(RequestBody):
    """The version's result cache: a repeat of a deterministic input is answered at once with
    the output of an earlier prediction, as a new prediction of the caller's."""

    enabled: bool = Field(
        default=False,
        description="Answer repeats from the cache. Which inputs are deterministic: all for "
        "embeddings and custom classes, for text generation those with `temperature` 0 or a "
        "`seed`; never types whose outputs are files (text-to-image).",
    )
    ttl_s: int = Field(
        default=86400,
        ge=1,
        le=30 * 86400,
        description="How long after it succeeded a prediction's output may answer a repeat.",
    )
    shared: bool = Field(
        default=False,
        description="Answer one user's request with another user's output. Off: an output can "
        "reveal someone else's input.",
    )


class VersionCreate(RequestBody):
    # For the document: `predictor` (a string) with model_type `custom`, and only then; and
    # `batching` continuous only for text generation.
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"model_type": {"const": CUSTOM}}},
                    "then": {
                        "required": ["predictor"],
                        "properties": {"predictor": {"type": "string"}},
                    },
                    "else": {"properties": {"predictor": {"type": "null"}}},
                },
                {
                    "if": {"properties": {"model_type": {"not": {"const": "text-generation"}}}},
                    "then": {"properties": {"batching": {"const": "static"}}},
                },
            ]
        }
    )

    model_type: ModelType = Field(  # type: ignore[valid-type]
        description="A built-in type, or `custom` with `predictor` naming your class."
    )
    predictor: str | None = Field(
        default=None,
        validate_default=True,
        max_length=200,
        pattern=CLASS_PATH_PATTERN,
        description="For `custom`: `package.module:ClassName`, importable on the workers, "
        "implementing `setup()` and `predict_batch(inputs)` (models/base.py).",
    )
    weights: str = Field(
        max_length=1024,
        pattern=r"^(package|file|generated)://[^\x00\s]+$",
        description="`package://<module>/<path>` inside an installed package, `file:///<path>` "
        "on the workers, or `generated://tiny-stable-diffusion`. Never downloaded.",
    )
    input_schema: dict[str, Any] = Field(
        description="JSON Schema (2020-12) of the input object: types, defaults, minimum/"
        "maximum, enum, required, additionalProperties. Its `$ref`s point inside it "
        "(`#/$defs/...`), and its defaults are valid: otherwise 422 naming `input_schema`.",
        json_schema_extra={"required": ["type"], "properties": {"type": {"const": "object"}}},
    )
    hardware: Literal["cpu", "gpu"] = "cpu"
    max_batch_size: int = Field(default=1, ge=1, le=256)
    max_batch_wait_ms: int = Field(default=5, ge=0, le=60_000)
    batching: Literal["static", "continuous"] = Field(
        default="static",
        description="`static`: a gathered batch runs to its last token. `continuous` (text "
        "generation): requests join and leave the running batch between tokens, up to "
        "`max_batch_size` at once.",
    )
    run_timeout_s: int = Field(default=300, ge=1, le=3600)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    @field_validator("input_schema")
    @classmethod
    def valid_object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        check_input_schema(schema)
        return schema

    @field_validator("predictor")
    @classmethod
    def predictor_iff_custom(cls, predictor: str | None, info: ValidationInfo) -> str | None:
        model_type = info.data.get("model_type")  # absent if invalid: named already
        if model_type is not None and (model_type == CUSTOM) != (predictor is not None):
            raise ValueError("give `predictor` for model_type custom, and only then")
        return predictor

    @field_validator("batching")
    @classmethod
    def continuous_is_for_text(cls, batching: str, info: ValidationInfo) -> str:
        if batching == "continuous" and info.data.get("model_type") != "text-generation":
            raise ValueError("continuous batching is for model_type text-generation")
        return batching

    @field_validator("cache")
    @classmethod
    def no_cache_of_files(cls, cache: CacheSettings, info: ValidationInfo) -> CacheSettings:
        if cache.enabled and info.data.get("model_type") in FILE_OUTPUTS:
            raise ValueError("outputs that are files are not cached: a file is its owner's")
        return cache

    def stored(self) -> dict[str, Any]:
        """The fields as the version's row has them."""
        return self.model_dump(exclude={"cache"}) | {
            "cache_enabled": self.cache.enabled,
            "cache_ttl_s": self.cache.ttl_s,
            "cache_shared": self.cache.shared,
        }


class VersionOut(ResponseBody):
    id: str
    model_type: str
    predictor: str | None
    input_schema: dict[str, Any]
    hardware: str
    max_batch_size: int
    max_batch_wait_ms: int
    batching: str
    run_timeout_s: int
    cache: CacheSettings
    created_at: datetime
    cog_version: str = COG_VERSION

    @computed_field  # type: ignore[prop-decorator]
    @property
    def openapi_schema(self) -> dict[str, Any]:
        """Input and output in Cog's form (`components.schemas.Input/Output`)."""
        return openapi_schema(self.model_type, self.input_schema)


class ModelOut(ResponseBody):
    url: str
    owner: str
    name: str
    description: str
    visibility: Literal["public"] = "public"
    github_url: str | None
    paper_url: str | None
    license_url: str | None
    cover_image_url: str | None
    run_count: int
    default_example: None = None
    is_official: bool = Field(description="Shipped with Quern (owned by its system account).")
    latest_version: VersionOut | None


class VersionPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[VersionOut]


class ModelPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[ModelOut]


class HardwareOut(ResponseBody):
    """Replicate's hardware object: Quern's `sku` is a version's `hardware`."""

    name: str
    sku: str


class CollectionSummary(ResponseBody):
    name: str
    slug: str
    description: str


class CollectionOut(CollectionSummary):
    models: list[ModelOut]


class CollectionPage(ResponseBody):
    next: str | None
    previous: str | None
    results: list[CollectionSummary]
