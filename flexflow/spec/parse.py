"""The first stages of loading: YAML text to data and positions, then the schema's verdict on the data.

The schema check runs in two speeds (:class:`~flexflow.contract.schema.SchemaChecker`): a compiled
check passes a valid spec quickly, and only an invalid one is walked by jsonschema, whose errors
become messages that say what to write (the hints below).
"""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import ValidationError

from flexflow.contract import wire
from flexflow.contract.schema import Problem
from flexflow.spec.problems import SpecError, SpecProblem
from flexflow.spec.schema import DURATION_KEYS, spec_checker
from flexflow.spec.yaml_source import KeyPath, Positions, YamlProblem, load


def read_mapping(text: str, file: str) -> tuple[dict[str, Any], Positions]:
    """The spec's data and where each key stands, or :class:`SpecError` when it is no YAML mapping."""
    try:
        data, positions = load(text)
    except YamlProblem as exc:
        raise SpecError([SpecProblem(file, exc.line, exc.column, exc.message)]) from None
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(file, 1, 1, "a spec is a YAML mapping (version: 1, dag_id: ..., images: ...)")])
    return data, positions


def schema_problems(data: dict[str, Any]) -> list[Problem]:
    """What the spec schema finds wrong, one problem per path; empty (and fast) for a valid spec."""
    return spec_checker().problems(data, _hint)


_HINTS = {
    "name": "must be lowercase letters, digits and _, starting with a letter",
    "dag_id": "must be letters, digits, '_', '.' and '-'",
    "webhook_url": "must be an https URL",
    "webhook_events": f"must be a list of the API's webhook events ({', '.join(wire.WEBHOOK_EVENTS)})",
    "to": "must be a file://, s3:// or gs:// URL",
    "start_date": "must be a date such as 2026-11-01",
    "version": "must be 1 (the only spec format so far)",
    **{key: "must be a duration such as 30s, 2m, 1h, 1h30m or PT2M" for key in DURATION_KEYS},
}


def _hint(path: KeyPath, error: ValidationError) -> str | None:
    """A message saying what to write, for the errors whose jsonschema wording says only what is wrong."""
    key = next((part for part in reversed(path) if isinstance(part, str)), "")
    if error.validator == "minItems" and path and path[-1] == "images":
        return "a spec needs at least one image"
    if error.validator == "minItems" and len(path) >= 2 and path[-2] == "variants":
        return f"list at least one value for {key}"
    if key == "webhook_events":
        return _events_hint(error)
    if key in _HINTS and error.validator in ("pattern", "const", "type"):
        return f"{_HINTS[key]}; got {error.instance!r}"
    return None


def _events_hint(error: ValidationError) -> str:
    """What to write for webhook_events: the API's event names, each once, or no key for its default."""
    events = ", ".join(wire.WEBHOOK_EVENTS)
    if error.validator == "minItems":
        default = " and ".join(wire.DEFAULT_WEBHOOK_EVENTS)
        return f"list at least one event ({events}), or leave webhook_events out for the API's default ({default})"
    if error.validator == "uniqueItems":
        return f"names an event twice; list each once: {error.instance!r}"
    if error.validator == "enum":
        return f"unknown webhook event {error.instance!r}; the API sends {events}"
    return f"{_HINTS['webhook_events']}; got {error.instance!r}"
