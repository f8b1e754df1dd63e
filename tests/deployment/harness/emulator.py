"""The emulator's control routes (``/_emulator``), over the same standard-library HTTP as the REST client."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flexflow.emulator.server import API_KEYS_ENV
from tests.deployment.harness.rest import http_request, json_payload


def emulator_command(*flags: str) -> list[str]:
    """``flexflow emulator`` on a free port (it prints the URL it listens on), with the given flags."""
    return [sys.executable, "-m", "flexflow.cli", "emulator", "--port", "0", *flags]


def emulator_environment(*api_keys: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment that gives ``flexflow emulator`` its keys, so that no process listing shows them."""
    return {**(os.environ if base is None else base), API_KEYS_ENV: ",".join(api_keys)}


@dataclass
class EmulatorControl:
    """The emulator's ``/_emulator`` routes: accounting, faults, settings."""

    url: str

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return json_payload(http_request(method, self.url + path, body)[1])

    def accounting(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/accounting")

    def add_faults(self, *rules: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/_emulator/faults", {"rules": list(rules)})

    def clear_faults(self) -> dict[str, Any]:
        return self._call("DELETE", "/_emulator/faults")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings (``queue_seconds``, ``processing_seconds``, ...) for jobs created from now on."""
        return self._call("PATCH", "/_emulator/config", changes)

    def reset(self) -> None:
        """Forget every job, idempotency record and fault: accounting starts from zero."""
        self._call("POST", "/_emulator/reset")

    def received_requests(self) -> list[dict[str, Any]]:
        """Every request the emulator received (the last 10,000), without its API key header."""
        return list(self._call("GET", "/_emulator/requests")["requests"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/_emulator/jobs/{job_id}")
