"""Provider information: the ``apache_airflow_provider`` entry point (connection type ``apiframe``)."""

from __future__ import annotations

from typing import Any

from flexflow import __version__, defaults
from flexflow.contract.wire import PRODUCTION_BASE_URL


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "flexflow",
        "name": "flexflow (Apiframe Flux 2 Flex)",
        "description": "Flux 2 Flex image generation through the Apiframe API: hook, operator, sensor, trigger.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Apiframe", "external-doc-url": "https://apiframe.ai", "tags": ["service"]}
        ],
        "hooks": [{"integration-name": "Apiframe", "python-modules": ["flexflow.airflow.hooks"]}],
        "operators": [{"integration-name": "Apiframe", "python-modules": ["flexflow.airflow.operators"]}],
        "sensors": [{"integration-name": "Apiframe", "python-modules": ["flexflow.airflow.sensors"]}],
        "triggers": [{"integration-name": "Apiframe", "python-modules": ["flexflow.airflow.triggers"]}],
        "extra-links": ["flexflow.airflow.links.ApiframeJobLink"],
        "connection-types": [
            {
                "connection-type": "apiframe",
                "hook-class-name": "flexflow.airflow.hooks.FluxHook",
                "hook-name": "Apiframe (Flux)",
                "conn-fields": {
                    "request_timeout": {
                        "label": "Request timeout (s)",
                        "description": "Longest wait for one API response.",
                        "schema": {"type": ["number", "null"], "default": defaults.REQUEST_TIMEOUT, "minimum": 1},
                    },
                    "max_attempts": {
                        "label": "Max attempts",
                        "description": "Attempts per call for rate limits and outages (backoff in between).",
                        "schema": {
                            "type": ["integer", "null"],
                            "default": defaults.MAX_ATTEMPTS,
                            "minimum": 1,
                            "maximum": 20,
                        },
                    },
                    "job_link": {
                        "label": "Job link",
                        "description": "Where the 'Apiframe job' button points; {base_url} and {job_id} are filled in.",
                        "schema": {"type": ["string", "null"], "default": defaults.JOB_LINK},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": PRODUCTION_BASE_URL, "password": "afk_..."},
                },
            }
        ],
    }
