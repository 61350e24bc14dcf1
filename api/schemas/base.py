"""Base classes for request bodies (strict about unknown fields) and responses."""

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseBody(BaseModel):
    model_config = ConfigDict(from_attributes=True)


@dataclass(frozen=True)
class Matching:
    """`Annotated[str, Matching(pattern, message)]`: a string documented with `pattern` (a
    regular expression ECMA-262 and Python read alike: no `\\d`, which is Unicode in Python),
    whose mismatches are refused with `message` rather than the expression itself."""

    pattern: str
    message: str
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def check(self, value: str) -> str:
        if self._compiled.fullmatch(value) is None:
            raise PydanticCustomError("string_pattern_mismatch", self.message)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(schema) | {"pattern": self.pattern}


class NeverNull:
    """`Annotated[T | None, Header(...), NeverNull()]`: documented as T alone. A header, query
    parameter or form field that is not given is absent, never null: a document that allowed
    null would have clients send the text `null`."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        documented = handler(schema)
        variants = [v for v in documented.get("anyOf", []) if v != {"type": "null"}]
        if len(variants) != 1:
            return documented
        alone: JsonSchemaValue = variants[0]
        return alone | {k: v for k, v in documented.items() if k != "anyOf"}
