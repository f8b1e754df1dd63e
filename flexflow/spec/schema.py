"""The JSON Schema of a spec file (v1), built from the contract's parameter schemas.

The committed copy is ``schemas/flexflow-spec.schema.json`` (``flexflow schema`` prints it; a test
fails when it is stale). Editors use it through the ``# yaml-language-server: $schema=...`` line.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Any

from flexflow import defaults
from flexflow.contract import wire
from flexflow.contract.params import FLUX_PARAMS
from flexflow.contract.schema import DRAFT, SchemaChecker, flux_params_schema, param_schema

SCHEMA_ID = "urn:flexflow:schema:spec-v1"
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
DAG_ID_PATTERN = r"^[A-Za-z0-9_.-]+$"  # Airflow's key rule, ASCII only
#: 30s, 2m, 1h30m, 1d; or ISO 8601 (PT2M, P1D).
DURATION_PATTERN = (
    r"^(?:(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+|P(?!$)(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?)$"
)
#: The settings written as durations (parsed by flexflow.spec.durations).
DURATION_KEYS = ("retry_delay", "timeout", "poll_interval", "review_timeout")
HTTPS_URL_PATTERN = r"^https://[^\s/?#.][^\s]*$"
PLACEHOLDERS = ("image", "variant", "ext", "job_id")
#: An Airflow pool name as flexflow takes it: Airflow stores up to 256 characters; flexflow keeps them plain.
POOL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,256}$"
#: ``publish.review``'s values: no review, or an approval before anything is published.
REVIEW_MODES = ("none", "required")
SCHEDULE_PRESETS = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")


def _duration(description: str, default: timedelta, example: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "default": defaults.shown(default),
        "description": f"{description} A duration: 30s, 2m, 1h, 1h30m, or ISO 8601 (PT2M).",
        "examples": [example],
    }


def _webhook() -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": HTTPS_URL_PATTERN,
        "description": "An https URL the API notifies (signed) when a job finishes.",
    }


def _webhook_events() -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "uniqueItems": True,
        "items": {"enum": list(wire.WEBHOOK_EVENTS)},
        "description": (
            "The events the webhook receives (needs webhook_url); the API's default is "
            + " and ".join(wire.DEFAULT_WEBHOOK_EVENTS)
            + "."
        ),
        "examples": [list(wire.WEBHOOK_EVENTS)],
    }


def _task_settings() -> dict[str, Any]:
    """Keys that `defaults` sets for every image and an image may set for itself."""
    return {
        "flux": flux_params_schema(),
        "retries": {
            "type": "integer",
            "minimum": 0,
            "maximum": 20,
            "default": defaults.RETRIES,
            "description": "Airflow task retries.",
        },
        "retry_delay": _duration("Wait between task retries.", defaults.RETRY_DELAY, "2m"),
        "timeout": _duration("Longest wait for one job.", defaults.JOB_TIMEOUT, "20m"),
        "poll_interval": _duration(
            "First interval between job status checks (it grows on long jobs).", defaults.POLL_INTERVAL, "10s"
        ),
        "webhook_url": _webhook(),
        "webhook_events": _webhook_events(),
    }


def _variants() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "One job per combination of the listed flux values.",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            p.name: {"type": "array", "minItems": 1, "uniqueItems": True, "items": param_schema(p)} for p in FLUX_PARAMS
        },
    }


def _image() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "prompt"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64, "description": "Unique in the spec."},
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": wire.PROMPT_MAX_LENGTH,
                "description": "What to generate; Jinja-templated at run time ({{ params.x }}, {{ ds }}).",
            },
            "variants": _variants(),
            **_task_settings(),
        },
    }


def _publish() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["to"],
        "properties": {
            "to": {
                "type": "string",
                "pattern": r"^(file|s3|gs)://",
                "description": "Object-storage URL of the target folder (file://, s3://, gs://); Jinja-templated.",
                "examples": ["file:///srv/assets/{{ dag.dag_id }}/{{ ds }}"],
            },
            "conn_id": {"type": "string", "description": "Airflow connection of the storage (remote targets)."},
            "filename": {
                "type": "string",
                "minLength": 1,
                "default": defaults.FILENAME,
                "description": "File name; placeholders {image}, {variant}, {ext}, {job_id}; Jinja-templated.",
            },
            "manifest": {
                "type": "boolean",
                "default": defaults.MANIFEST,
                "description": "Write manifest.json beside the images.",
            },
            "asset": {
                "type": "string",
                "minLength": 1,
                "description": "URI of the Airflow Asset updated when the run has published (default flexflow://<dag_id>).",
            },
            "review": {
                "enum": list(REVIEW_MODES),
                "default": defaults.REVIEW,
                "description": (
                    "required: the finished images wait in a staging folder under the target, with their contact "
                    "sheet, until a person approves them in Airflow (Required Actions); approved, they are moved "
                    "into the target, then the manifest and the Asset event; rejected, nothing is published."
                ),
            },
            "review_timeout": _duration(
                "Longest wait for the approval (with review: required); then nothing is published.",
                defaults.REVIEW_TIMEOUT,
                "2d",
            ),
        },
    }


def _budget() -> dict[str, Any]:
    def cap(kind: str, period: str) -> dict[str, Any]:
        if kind == "credits":
            return {"type": "integer", "minimum": 1, "description": f"Most API credits {period} (the API's count)."}
        return {"type": "number", "exclusiveMinimum": 0, "description": f"Most USD {period}, at price_per_megapixel."}

    return {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "description": "Spend caps, checked against the run's estimate before anything is submitted.",
        "properties": {
            "credits_per_run": cap("credits", "one run may cost"),
            "usd_per_run": cap("usd", "one run may cost"),
            "credits_per_day": cap("credits", "the DAG's runs of one UTC day may cost together"),
            "usd_per_day": cap("usd", "the DAG's runs of one UTC day may cost together"),
            "price_per_megapixel": {
                "type": "number",
                "minimum": 0,
                "maximum": float(defaults.MAX_PRICE_PER_MEGAPIXEL),
                "default": float(defaults.PRICE_PER_MEGAPIXEL),
                "description": "USD per billed megapixel, for the usd_ caps.",
            },
        },
    }


@cache
def spec_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": "flexflow spec (v1)",
        "description": "One scheduled image refresh: Flux 2 Flex jobs compiled into an Airflow DAG.",
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "dag_id", "images", "publish"],
        "properties": {
            "version": {"const": 1, "description": "Spec format version."},
            "dag_id": {
                "type": "string",
                "pattern": DAG_ID_PATTERN,
                "maxLength": 250,
                "description": "Airflow DAG id; unique across all specs.",
            },
            "description": {"type": "string"},
            "schedule": {
                "type": ["string", "null"],
                "description": "Cron expression, an Airflow preset (@daily, @weekly, ...), or null (manual only).",
                "examples": ["0 6 * * MON", "@daily", None],
            },
            "start_date": {
                "type": "string",
                "pattern": r"^\d{4}-\d{2}-\d{2}(?:[T ].+)?$",
                "description": "First logical date (YYYY-MM-DD, or an ISO 8601 date-time); required when scheduled.",
            },
            "catchup": {"type": "boolean", "default": defaults.CATCHUP},
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
            "owner": {"type": "string", "minLength": 1, "default": defaults.OWNER},
            "connection_id": {
                "type": "string",
                "minLength": 1,
                "default": defaults.CONNECTION_ID,
                "description": "Airflow connection (type apiframe) with the API's base URL and key.",
            },
            "pool": {
                "type": "string",
                "pattern": POOL_NAME_PATTERN,
                "default": defaults.POOL,
                "description": "Airflow pool (1 to 256 of letters, digits, _ . -) of the submit and wait tasks.",
            },
            "params": {
                "type": "object",
                "description": "Airflow DAG params: the trigger form's fields, usable in templates.",
                "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
            },
            "defaults": {
                "type": "object",
                "additionalProperties": False,
                "description": "Settings for every image; an image's own values win.",
                "properties": _task_settings(),
            },
            "images": {"type": "array", "minItems": 1, "items": _image()},
            "publish": _publish(),
            "budget": _budget(),
            "reuse": {
                "type": "boolean",
                "description": (
                    "Copy an image already published under the publish root instead of paying for it again, "
                    "when its rendered prompt and every flux param are equal (default: true when every image "
                    "has a fixed seed)."
                ),
            },
        },
    }


@cache
def spec_checker() -> SchemaChecker:
    return SchemaChecker(spec_schema())
