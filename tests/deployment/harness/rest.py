"""Airflow's public REST API (v2) as the deployment's admin, over the standard library's HTTP client.

Standard library only: the harness must not depend on what it tests (flexflow's own HTTP client).
A busy metadata database answers with a 5xx (SQLite's "database is locked" is a 500): such answers
are retried, for a POST only when the caller says it may be repeated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib import error as urlerror
from urllib import parse, request

from tests.deployment.harness.waiting import HarnessError, wait_until

TERMINAL_RUN_STATES = ("success", "failed")
#: What a busy metadata database answers with (SQLite's "database is locked" is a 500): worth a retry.
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
API_ATTEMPTS = 4


class HttpError(HarnessError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


def http_request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One request with a JSON body (when ``body`` is not None): the status and the payload; HttpError for >= 400."""
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    req = request.Request(url, data=data, headers=all_headers, method=method)  # loopback URLs we built
    try:
        with request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urlerror.HTTPError as exc:
        raise HttpError(method, url, exc.code, exc.read().decode(errors="replace")) from None


def json_payload(payload: bytes) -> Any:
    """A response's JSON, or None for an empty one."""
    return json.loads(payload) if payload else None


@dataclass
class AirflowApi:
    """Airflow's public REST API, authenticated as the deployment's admin with a JWT from ``/auth/token``."""

    base_url: str
    username: str
    password: str
    timeout: float = 30.0
    _token: str | None = field(default=None, repr=False)

    def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            _, payload = http_request(
                "POST",
                f"{self.base_url}/auth/token",
                {"username": self.username, "password": self.password},
                timeout=self.timeout,
            )
            self._token = json_payload(payload)["access_token"]
        return self._token

    def call(self, method: str, path: str, body: Any = None, *, repeatable: bool = False, **params: Any) -> Any:
        """One API request. An expired token is fetched again, once; a transient 5xx is retried for every
        method but POST, and for a POST the caller says is ``repeatable``."""
        query = {k: v for k, v in params.items() if v is not None}
        url = f"{self.base_url}/api/v2{path}" + (f"?{parse.urlencode(query, doseq=True)}" if query else "")
        retry_transient = repeatable or method != "POST"
        refreshed = False
        for attempt in range(1, API_ATTEMPTS + 1):
            headers = {"Authorization": f"Bearer {self.token(refresh=refreshed)}"}
            try:
                return json_payload(http_request(method, url, body, headers, self.timeout)[1])
            except HttpError as exc:
                last_attempt = attempt == API_ATTEMPTS
                if exc.status == 401 and not refreshed and not last_attempt:
                    refreshed = True
                elif exc.status in TRANSIENT_STATUSES and retry_transient and not last_attempt:
                    time.sleep(attempt)
                else:
                    raise
        raise AssertionError("unreachable")

    # monitoring

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/monitor/health")

    def heartbeat(self, component: str) -> datetime | None:
        """The latest heartbeat of ``scheduler``, ``triggerer`` or ``dag_processor``."""
        latest = (self.health().get(component) or {}).get(f"latest_{component}_heartbeat")
        return datetime.fromisoformat(latest) if latest else None

    def healthy(self) -> bool:
        health = self.health()
        components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(c) or {}).get("status") == "healthy" for c in components)

    # dags and runs

    def dags(self) -> list[dict[str, Any]]:
        return self._paged("/dags", "dags")

    def import_errors(self) -> list[dict[str, Any]]:
        return self._paged("/importErrors", "import_errors")

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self.call("PATCH", f"/dags/{_q(dag_id)}", {"is_paused": False})

    def pause(self, dag_id: str) -> dict[str, Any]:
        return self.call("PATCH", f"/dags/{_q(dag_id)}", {"is_paused": True})

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs, newest first."""
        return self._paged(f"/dags/{_q(dag_id)}/dagRuns", "dag_runs", order_by="-run_after")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
        """Start a manual run. Without ``run_id`` one is made up, so a retried POST cannot start two runs."""
        chosen = run_id or f"manual__{datetime.now(UTC).isoformat()}"
        body = {"logical_date": None, "conf": conf or {}, "dag_run_id": chosen}
        try:
            return self.call("POST", f"/dags/{_q(dag_id)}/dagRuns", body, repeatable=True)
        except HttpError as exc:
            if exc.status == 409 and run_id is None:  # an attempt whose answer was lost created it
                return self.dag_run(dag_id, chosen)
            raise

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> dict[str, Any]:
        """Mark a run ``success``, ``failed`` or ``queued``, as the UI's buttons do (running tasks are stopped)."""
        return self.call("PATCH", f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", {"state": state})

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 300.0, check: Callable[[], None] = lambda: None
    ) -> str:
        """Wait until the run ends; returns its state (``success`` or ``failed``)."""

        def ended() -> str | None:
            state = self.dag_run(dag_id, run_id)["state"]
            return state if state in TERMINAL_RUN_STATES else None

        return wait_until(ended, timeout, f"run {run_id} of {dag_id} to end", interval=1.0, check=check)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self._paged(f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances", "task_instances")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``task_id`` (``task_id[map_index]`` when mapped) -> state."""
        return {_ti_name(ti): ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """A try's whole log as text: one line per structured event (JSON), or the raw line."""
        payload = self.call(
            "GET",
            f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/logs/{try_number}",
            map_index=map_index,
            full_content="true",
        )
        content = payload.get("content") or []
        if isinstance(content, str):
            return content
        return "\n".join(item if isinstance(item, str) else json.dumps(item) for item in content)

    def clear_task_instances(self, dag_id: str, **body: Any) -> dict[str, Any]:
        return self.call("POST", f"/dags/{_q(dag_id)}/clearTaskInstances", {"dry_run": False, **body})

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.call(
            "GET",
            f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/xcomEntries/{_q(key)}",
            map_index=map_index,
            deserialize="true",
        )
        return entry["value"]

    def respond(
        self, dag_id: str, run_id: str, task_id: str, option: str, params: dict[str, Any], map_index: int = -1
    ) -> dict[str, Any]:
        """Answer a human-in-the-loop task, as the Required Actions form does."""
        path = f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/{map_index}/hitlDetails"
        return self.call("PATCH", path, {"chosen_options": [option], "params_input": params})

    def pool(self, name: str = "default_pool") -> dict[str, Any]:
        return self.call("GET", f"/pools/{_q(name)}")

    def asset_events(self, **filters: Any) -> list[dict[str, Any]]:
        return self._paged("/assets/events", "asset_events", **filters)

    def _paged(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self.call("GET", path, limit=100, offset=len(items), **params)
            items += page[key]
            if not page[key] or len(items) >= page.get("total_entries", 0):
                return items


def _q(part: str) -> str:
    return parse.quote(part, safe="")


def _ti_name(ti: dict[str, Any]) -> str:
    index = ti.get("map_index", -1)
    return ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"
