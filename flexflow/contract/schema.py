"""JSON Schemas derived from the parameter table, and validation with messages that say what to do.

Steps: a fractional step (0.05, 0.1) is published as the exact list of allowed values (``enum``)
next to ``minimum``/``maximum``, not as ``multipleOf``. Every JSON Schema validator (Python's
jsonschema, Ajv in the YAML language server) implements ``multipleOf`` with binary floats and so
rejects ``0.15`` as a multiple of ``0.05``; an ``enum`` of decimals is compared exactly everywhere.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from flexflow.contract import wire
from flexflow.contract.params import FLUX_PARAMS, PARAMS_BY_NAME, FluxParam

DRAFT = "https://json-schema.org/draft/2020-12/schema"
HTTP_URL_PATTERN = r"^https?://[^\s/?#.][^\s]*$"


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def param_schema(param: FluxParam) -> dict[str, Any]:
    """The JSON Schema of one ``fluxParams`` key, with description, default and examples for editors."""
    schema: dict[str, Any] = {"type": param.type}
    if param.choices:
        schema["enum"] = list(param.choices)
    if param.url:
        schema.update(format="uri", pattern=HTTP_URL_PATTERN)
    if param.bounds is not None:
        low, high = param.bounds
        schema["minimum"] = _json_number(low)
        schema["maximum"] = _json_number(high)
    if param.step and param.type == "number":
        schema["enum"] = [_json_number(v) for v in param.allowed_numbers()]
    description = f"{param.description} Allowed: {param.allowed_text()}."
    if param.default is not None:
        schema["default"] = param.default
        description += f" Default: {_json_text(param.default)}."
    schema["description"] = description
    if param.examples:
        schema["examples"] = list(param.examples)
    return schema


def _json_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def json_text(value: object) -> str:
    """A value as the JSON/YAML author wrote it (true, null, "text"), for messages."""
    return json.dumps(value, ensure_ascii=False, default=str)


def flux_params_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Flux 2 Flex parameters (the documented fluxParams).",
        "additionalProperties": False,
        "properties": {p.name: param_schema(p) for p in FLUX_PARAMS},
    }


def request_schema() -> dict[str, Any]:
    """The body of ``POST /v2/images/generate`` for Flux 2 Flex, as flexflow sends it."""
    return {
        "$schema": DRAFT,
        "$id": "urn:flexflow:schema:flux-2-flex-request",
        "title": "Flux 2 Flex generation request",
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt", "model"],
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": wire.PROMPT_MAX_LENGTH,
                "description": "Text description of what to generate.",
            },
            "model": {"const": wire.MODEL_ID, "description": "Model identifier."},
            wire.PARAMS_FIELD: flux_params_schema(),
            wire.WEBHOOK_URL_FIELD: {
                "type": "string",
                "format": "uri",
                "pattern": HTTP_URL_PATTERN,
                "description": "URL that receives signed job events.",
            },
            wire.WEBHOOK_EVENTS_FIELD: {
                "type": "array",
                "minItems": 1,
                "items": {"enum": list(wire.WEBHOOK_EVENTS)},
            },
        },
    }


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (a path of keys and indexes) and what to do."""

    path: tuple[str | int, ...]
    message: str

    @property
    def dotted_path(self) -> str:
        """The path as the API's 400 ``details`` keys it: ``fluxParams.guidance``."""
        return ".".join(str(part) for part in self.path) or "$"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


Hint = Callable[[tuple[str | int, ...], ValidationError], str | None]


def describe(error: ValidationError, hint: Hint | None = None) -> list[Problem]:
    """Turn a jsonschema error into problems whose message names the key and what it allows."""
    path = tuple(error.absolute_path)
    # The schema is a mapping whenever its additionalProperties fired; the check narrows the type
    # (jsonschema types ``error.schema`` as mapping, boolean schema or unset).
    if (
        error.validator == "additionalProperties"
        and isinstance(error.instance, Mapping)
        and isinstance(error.schema, Mapping)
    ):
        known = error.schema.get("properties", {})
        return [
            Problem((*path, key), f"unknown key '{key}'{did_you_mean(key, known)}; allowed: {', '.join(known)}")
            for key in error.instance
            if key not in known
        ]
    if "propertyNames" in error.schema_path and isinstance(error.instance, str):
        # jsonschema reports a bad key at its mapping; the problem is the key itself.
        return [Problem((*path, error.instance), f"'{error.instance}' is not a valid name: {error.message}")]
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return [Problem((*path, missing), f"{missing} is required")]
    param = _param_at(path)
    if param is not None:
        return [Problem(path, f"{param.name} must be {param.allowed_text()}; got {json_text(error.instance)}")]
    return [Problem(path, (hint and hint(path, error)) or error.message)]


def _param_at(path: Sequence[str | int]) -> FluxParam | None:
    """The flux parameter a value stands for: under fluxParams/flux, or an item of a spec's variants list."""
    if len(path) >= 2 and path[-2] in (wire.PARAMS_FIELD, "flux") and isinstance(path[-1], str):
        return PARAMS_BY_NAME.get(path[-1])
    if len(path) >= 3 and path[-3] == "variants" and isinstance(path[-1], int) and isinstance(path[-2], str):
        return PARAMS_BY_NAME.get(path[-2])
    return None


class SchemaChecker:
    """Validation in two speeds: a compiled check says whether an instance is valid (the usual
    case, fast); only when it is not does jsonschema walk it to explain every problem.

    The published schemas use only keywords that mean the same in drafts 7 and 2020-12, so the
    compiled check (fastjsonschema, draft 7) and jsonschema (draft 2020-12) agree; a test holds
    them to it on every corpus and property-test input.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.validator = Draft202012Validator(schema)
        self._is_valid = _compiled({k: v for k, v in schema.items() if k not in ("$schema", "$id")})

    def is_valid(self, instance: object) -> bool:
        try:
            self._is_valid(instance)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def problems(self, instance: object, hint: Hint | None = None) -> list[Problem]:
        return [] if self.is_valid(instance) else problems(self.validator, instance, hint)


def _compiled(schema: dict[str, Any]) -> Callable[[object], object]:
    # use_default=False: fastjsonschema would otherwise write each `default` into the instance,
    # and a documented default would silently override the spec's own defaults.
    return fastjsonschema.compile({"$schema": "http://json-schema.org/draft-07/schema#", **schema}, use_default=False)


def problems(validator: Draft202012Validator, instance: object, hint: Hint | None = None) -> list[Problem]:
    """Every problem of an instance, one per key, in document order of their paths."""
    found: dict[tuple[str | int, ...], Problem] = {}
    for error in validator.iter_errors(instance):
        for problem in describe(error, hint):
            found.setdefault(problem.path, problem)
    return sorted(found.values(), key=lambda p: [str(part) for part in p.path])


@cache
def request_checker() -> SchemaChecker:
    return SchemaChecker(request_schema())


def validate_request(body: object) -> list[Problem]:
    """Problems of a generation request body; empty when the API would accept it."""
    return request_checker().problems(body)
