"""A real Airflow deployment of flexflow on this machine, every service a separate process.

``Deployment`` starts, on loopback and in a private AIRFLOW_HOME, the API emulator, ``airflow
api-server``, ``airflow scheduler``, ``airflow dag-processor`` and ``airflow triggerer`` (and, for
the Celery configuration, ``airflow celery worker`` processes), waits until Airflow reports them
healthy and the specs' DAGs are parsed, and tears everything down again by the process ids it
started, whatever happens. Two configurations:

``local``
    LocalExecutor on a SQLite file: what ``airflow standalone`` uses; needs nothing installed.
``celery``
    CeleryExecutor, PostgreSQL as the metadata database (a fresh database, created and dropped)
    and result backend, Redis as the broker (a queue of its own), one or more Celery workers.

The DAG bundle is a single LocalDagBundle holding a copy of ``dags/flexflow_dags.py`` (the
production loader) with ``FLEXFLOW_SPECS_DIR`` pointing at the specs folder, and the connection
``apiframe_default`` points at the emulator. Drive it through Airflow's REST API (``.api``) and the
emulator's control routes (``.emulator``)::

    with Deployment("local", specs_dir=Path("specs")) as deployment:
        run = deployment.api.trigger("aurora_launch_set")
        deployment.api.wait_for_run("aurora_launch_set", run["dag_run_id"])

As a command (foreground; Ctrl-C or ``down`` tears it down)::

    python -m flexflow.deploy.harness up --config local --specs specs/ --home /tmp/ff-deploy
    python -m flexflow.deploy.harness down --home /tmp/ff-deploy
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib import error as urlerror
from urllib import parse, request

import psutil

from flexflow.emulator.server import announced_url

#: Every process a deployment starts (and their children) carry this variable: teardown finds stragglers by it.
MARKER = "FLEXFLOW_DEPLOYMENT_ID"
STATE_FILE = "deployment.json"
LOADER_NAME = "flexflow_dags.py"
#: The production loader, when this package runs from its source tree.
REPO_LOADER = Path(__file__).resolve().parents[2] / "dags" / LOADER_NAME
#: What dags/flexflow_dags.py says, for installs without the source tree.
LOADER_TEXT = '''"""flexflow's DAG-folder loader (written by flexflow.deploy.harness)."""

from pathlib import Path

from flexflow.compiler.loader import load_dags, specs_dir

# "airflow" and "dag" in this file tell Airflow's safe-mode scan that it defines DAGs.
globals().update(load_dags(specs_dir(default=Path(__file__).resolve().parent / "specs")))
'''
ADMIN_USER = "admin"
REDIS_OWNER_KEY = "flexflow-deploy:owner"
Config = Literal["local", "celery"]
TERMINAL_RUN_STATES = ("success", "failed")
#: What a busy metadata database answers with (SQLite's "database is locked" is a 500): worth a retry.
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
API_ATTEMPTS = 4


class HarnessError(RuntimeError):
    """The deployment could not be brought up, or did not behave."""


class ServicesUnavailable(HarnessError):
    """PostgreSQL or Redis is not reachable: the Celery configuration cannot run here."""


# -- small HTTP helpers (stdlib only: the harness must not depend on what it tests) ---------------------------


class HttpError(HarnessError):
    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


def _http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    req = request.Request(url, data=data, headers=all_headers, method=method)  # noqa: S310 - loopback URLs we built
    try:
        with request.urlopen(req, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urlerror.HTTPError as exc:
        raise HttpError(method, url, exc.code, exc.read().decode(errors="replace")) from None


def _json(payload: bytes) -> Any:
    return json.loads(payload) if payload else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def services_available(
    postgres: tuple[str, int] = ("127.0.0.1", 5432), redis: tuple[str, int] = ("127.0.0.1", 6379)
) -> str | None:
    """None when the Celery configuration can run here, else why not (a message for a skip)."""
    missing = [
        f"{name} on {host}:{port}"
        for name, (host, port) in (("PostgreSQL", postgres), ("Redis", redis))
        if not reachable(host, port)
    ]
    if missing:
        return f"the Celery configuration needs {' and '.join(missing)}: not reachable"
    return None


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.5,
    check: Callable[[], None] = lambda: None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; ``check`` may raise to stop early."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        check()
        try:
            value = condition()
        except (HarnessError, OSError) as exc:  # not up yet, or a transient error: try again
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# -- the emulator's control routes ---------------------------------------------------------------------------


@dataclass
class EmulatorControl:
    """The emulator's ``/_emulator`` routes: accounting, faults, settings."""

    url: str

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return _json(_http(method, self.url + path, body)[1])

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

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/_emulator/jobs/{job_id}")


def billing_problems(accounting: dict[str, Any], jobs: int) -> list[str]:
    """What keeps the emulator's ``accounting`` from "exactly one billed job per image, each submitted once"."""
    submissions = sorted(accounting["submissions_per_key"].values())
    checks = {
        f"{accounting['jobs_created']} jobs created, not {jobs}": accounting["jobs_created"] == jobs,
        f"{accounting['jobs_billed']} jobs billed, not {jobs}": accounting["jobs_billed"] == jobs,
        f"duplicates {accounting['duplicates']}": accounting["duplicates"] == {"by_key": {}, "by_body": 0},
        f"a request was resubmitted: submissions per key {submissions}": submissions == [1] * jobs,
    }
    return [problem for problem, holds in checks.items() if not holds]


# -- Airflow's public REST API (v2) --------------------------------------------------------------------------


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
            _, payload = _http(
                "POST",
                f"{self.base_url}/auth/token",
                {"username": self.username, "password": self.password},
                timeout=self.timeout,
            )
            self._token = _json(payload)["access_token"]
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
                return _json(_http(method, url, body, headers, self.timeout)[1])
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


# -- processes -----------------------------------------------------------------------------------------------


@dataclass
class Service:
    """One process the deployment started, in its own session (process group), logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    expected_down: bool = False  # killed on purpose: not a failure

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: teardown signals the whole group
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def process_tree(self) -> list[psutil.Process]:
        """The processes this service started (children, grandchildren, ...)."""
        return _descendants(self.pid) if self.alive() else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 15.0, kill: bool = False) -> None:
        """SIGTERM the process group (SIGKILL at once when ``kill``), SIGKILL what is left after ``grace``.

        Task processes that Airflow puts in process groups of their own are found as descendants
        first, and killed too if they outlive their service.
        """
        if self.process is None or self.process.returncode is not None:
            return
        descendants = _descendants(self.pid)
        _signal_group(self.pid, signal.SIGKILL if kill else signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=0 if kill else grace)
        _signal_group(self.pid, signal.SIGKILL)
        for process in descendants:
            _kill_process(process, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        psutil.wait_procs(descendants, timeout=5)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_process(process: psutil.Process, group: bool = False) -> None:
    """SIGKILL a process we started (or a descendant), and its own process group when it leads one."""
    with contextlib.suppress(psutil.Error, OSError):
        if group and os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()


def marked_processes(deployment_id: str) -> list[psutil.Process]:
    """Live processes carrying the deployment's marker in their environment (ours, or their children)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            ours = process.pid != os.getpid() and process.environ().get(MARKER) == deployment_id
            if ours and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


# -- the deployment ------------------------------------------------------------------------------------------


@dataclass
class Ports:
    api: int = field(default_factory=free_port)
    scheduler_logs: int = field(default_factory=free_port)
    triggerer_logs: int = field(default_factory=free_port)


class Deployment:
    """Airflow as separate services on loopback, flexflow's DAGs in it, the emulator as the API.

    :param config: ``local`` (LocalExecutor, SQLite) or ``celery`` (CeleryExecutor, PostgreSQL, Redis)
    :param specs_dir: the specs folder (``FLEXFLOW_SPECS_DIR``); default the project's ``specs/``
    :param workers: Celery workers to start (``celery`` only)
    :param root: the AIRFLOW_HOME to use (created); default a new temporary folder, removed at
        teardown unless something failed or ``keep_home``
    :param parallelism: ``[core] parallelism``: task slots of the executor (the LocalExecutor's
        worker processes; the scheduler's cap on running tasks for Celery)
    :param worker_concurrency: task slots of each Celery worker
    :param queue_seconds, processing_seconds: the emulator's job durations (changeable later
        through ``emulator.configure``)
    """

    def __init__(
        self,
        config: Config = "local",
        specs_dir: Path | str | None = None,
        *,
        workers: int = 1,
        root: Path | str | None = None,
        parallelism: int = 4,
        worker_concurrency: int = 2,
        queue_seconds: float = 1.0,
        processing_seconds: float = 3.0,
        postgres: tuple[str, int] = ("127.0.0.1", 5432),
        redis: tuple[str, int] = ("127.0.0.1", 6379),
        keep_home: bool = False,
        startup_timeout: float = 240.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        if config not in ("local", "celery"):
            raise ValueError(f"config must be 'local' or 'celery', not {config!r}")
        self.config: Config = config
        self.id = uuid.uuid4().hex[:10]
        self.specs_dir = Path(specs_dir or REPO_LOADER.parents[1] / "specs").resolve()
        self.workers = workers if config == "celery" else 0
        self._own_root = root is None
        self.home = Path(root).resolve() if root else Path(tempfile.mkdtemp(prefix=f"flexflow-deploy-{config}-"))
        self.parallelism = parallelism
        self.worker_concurrency = worker_concurrency
        self.queue_seconds = queue_seconds
        self.processing_seconds = processing_seconds
        self.postgres = postgres
        self.redis = redis
        self.keep_home = keep_home
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.ports = Ports()
        self.password = secrets.token_urlsafe(12)
        self.api_key = f"afk_deploy_{secrets.token_hex(8)}"
        self.database = f"flexflow_deploy_{self.id}"
        self.queue = f"flexflow-deploy-{self.id}"
        self.redis_db: int | None = None
        self.services: list[Service] = []  # every process started, in order, restarts included
        self.emulator: EmulatorControl | None = None
        self.api = AirflowApi(f"http://127.0.0.1:{self.ports.api}", ADMIN_USER, self.password)
        self.leftovers: list[str] = []  # processes teardown had to kill after their services were stopped
        self.timings: dict[str, float] = {}
        self._env: dict[str, str] = {}
        self._database_created = False
        self._failed = False
        self._worker_count = 0

    # -- public ----------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.api.base_url

    @property
    def dags_folder(self) -> Path:
        return self.home / "dags"

    @property
    def logs_folder(self) -> Path:
        return self.home / "logs"

    @property
    def env(self) -> dict[str, str]:
        """The environment every Airflow process of the deployment runs with (a copy)."""
        return dict(self._env)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._failed = True
        self.stop()

    def start(self) -> Self:
        started = time.monotonic()
        try:
            self._check_services()
        except ServicesUnavailable:
            if self._own_root:
                shutil.rmtree(self.home, ignore_errors=True)
            raise
        try:
            self._prepare_home()
            self._prepare_databases()
            self._env = self._airflow_env()
            self._start_emulator()
            migrate_started = time.monotonic()
            self._migrate()
            self.timings["db_migrate"] = time.monotonic() - migrate_started
            self._start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.ports.api))
            self._start("scheduler", "scheduler")
            self._start("dag-processor", "dag-processor")
            self.start_triggerer()
            for _ in range(self.workers):
                self.start_worker()
            self.wait_healthy(self.startup_timeout)
            self.wait_for_dags(self.expected_dag_ids(), self.startup_timeout)
        except BaseException as exc:
            self._failed = not isinstance(exc, ServicesUnavailable)  # a failure keeps the home for a look
            self.stop()
            raise
        self.timings["startup"] = time.monotonic() - started
        self._write_state()
        return self

    def stop(self) -> None:
        """Stop every process started (newest first), drop what was created; never raises."""
        for service in reversed(self.services):
            began = time.monotonic()
            with contextlib.suppress(Exception):
                service.stop()
            if service.process is not None:
                self.timings.setdefault(f"stop {service.name}", round(time.monotonic() - began, 2))
        stragglers = marked_processes(self.id)
        for process in stragglers:
            with contextlib.suppress(psutil.Error):
                self.leftovers.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
            _kill_process(process, group=True)
        psutil.wait_procs(stragglers, timeout=5)
        with contextlib.suppress(Exception):
            self._drop_databases()
        (self.home / STATE_FILE).unlink(missing_ok=True)
        if self._own_root and not self.keep_home and not self._failed:
            shutil.rmtree(self.home, ignore_errors=True)

    def remaining_processes(self) -> list[psutil.Process]:
        """Live processes of this deployment (empty after ``stop``)."""
        return marked_processes(self.id)

    def expected_dag_ids(self) -> set[str]:
        from flexflow.spec.folder import find_spec_files, lenient_dag_id

        files = find_spec_files([self.specs_dir]) if self.specs_dir.exists() else []
        return {dag_id for dag_id in (lenient_dag_id(f) for f in files) if dag_id}

    def wait_healthy(self, timeout: float = 120.0) -> dict[str, Any]:
        wait_until(self.api.healthy, timeout, "Airflow to report every component healthy", check=self.check_alive)
        return self.api.health()

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 120.0) -> None:
        wanted = set(dag_ids)

        def parsed() -> bool:
            return wanted <= {dag["dag_id"] for dag in self.api.dags()}

        try:
            wait_until(parsed, timeout, f"the DAGs {sorted(wanted)} to be parsed", interval=1.0, check=self.check_alive)
        except TimeoutError as exc:
            raise HarnessError(f"{exc}; import errors: {self.api.import_errors()}") from None

    def check_alive(self) -> None:
        """Raise (with the end of its log) if a service that should run has exited."""
        current: dict[str, Service] = {}
        for service in self.services:
            current[service.name.split("#")[0]] = service
        for service in current.values():
            if service.process is not None and not service.alive() and not service.expected_down:
                raise HarnessError(
                    f"{service.name} exited with {service.process.returncode}; end of {service.log_path}:\n"
                    f"{service.log_tail()}"
                )

    def service(self, name: str) -> Service:
        """The newest process started under this name (``triggerer``, ``worker-1``, ...)."""
        for service in reversed(self.services):
            if service.name.split("#")[0] == name:
                return service
        raise KeyError(name)

    # fault injection on the topology

    def kill(self, name: str) -> None:
        """SIGKILL a service and everything it started (its task processes too): a crashed machine."""
        service = self.service(name)
        service.expected_down = True
        service.stop(kill=True)

    def start_triggerer(self) -> Service:
        """Start a(nother) triggerer; after the first, wait until it heartbeats."""
        if any(s.name.split("#")[0] == "triggerer" for s in self.services):
            return self._start_and_wait("triggerer", "triggerer")
        return self._start("triggerer", "triggerer")

    def restart_triggerer(self) -> Service:
        self.kill("triggerer")
        return self.start_triggerer()

    def restart(self, name: str, env: dict[str, str] | None = None) -> Service:
        """Stop a service gracefully (SIGTERM) and start it again, with ``env`` laid over its environment.

        For ``scheduler``, ``dag-processor``, ``triggerer`` or ``api-server``; Celery workers are
        replaced with ``kill`` and ``start_worker``.
        """
        arguments = {
            "api-server": ("api-server", "--host", "127.0.0.1", "--port", str(self.ports.api)),
            "scheduler": ("scheduler",),
            "dag-processor": ("dag-processor",),
            "triggerer": ("triggerer",),
        }
        if name not in arguments:
            raise HarnessError(f"cannot restart {name!r}; restartable: {', '.join(arguments)}")
        service = self.service(name)
        service.expected_down = True
        service.stop()
        return self._start_and_wait(name, *arguments[name], env=env)

    def _start_and_wait(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        """Start a service again and wait until it heartbeats (or, the API server, answers)."""
        since = datetime.now(UTC)
        service = self._start(name, *args, env=env)
        component = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag_processor"}.get(name)

        def up() -> bool:
            if component is None:
                return bool(self.api.health())
            beat = self.api.heartbeat(component)
            return beat is not None and beat > since

        wait_until(up, 120, f"the new {name} to heartbeat", check=self.check_alive)
        return service

    def start_worker(self) -> Service:
        if self.config != "celery":
            raise HarnessError("Celery workers run in the celery configuration only")
        self._worker_count += 1
        number = self._worker_count
        return self._start(
            f"worker-{number}",
            "celery",
            "worker",
            "--queues",
            self.queue,
            "--concurrency",
            str(self.worker_concurrency),
            "--celery-hostname",
            f"w{number}-{self.id}@%h",
            "--without-mingle",
            "--without-gossip",
            env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
        )

    # observing the topology

    def executor_services(self) -> list[Service]:
        """The live processes that run tasks: the scheduler (LocalExecutor) or the Celery workers."""
        names = ("scheduler",) if self.config == "local" else tuple(self.worker_names())
        return [self.service(name) for name in names if self.service(name).alive()]

    def task_processes(self) -> list[psutil.Process]:
        """Task processes running now: Airflow starts each in a process group of its own."""
        found = []
        for service in self.executor_services():
            for process in _descendants(service.pid):
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(process.pid) == process.pid and process.status() != psutil.STATUS_ZOMBIE:
                        found.append(process)
        return found

    def service_of(self, pid: int) -> Service | None:
        """The live service whose process tree holds ``pid`` (e.g. the Celery worker running a task)."""
        for service in reversed(self.services):
            if service.alive() and (pid == service.pid or pid in {p.pid for p in _descendants(service.pid)}):
                return service
        return None

    def rss_bytes(self, name: str) -> int:
        """Resident memory of a service and its children (from /proc, through psutil)."""
        service = self.service(name)
        total = 0
        for process in [psutil.Process(service.pid), *_descendants(service.pid)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def workload_seconds(self) -> dict[str, list[tuple[float, str]]]:
        """Task instance id -> (seconds, final state) of every workload an executor slot ran for it.

        Read from the "Workload finished" lines the task supervisors log: the time each try (and
        each resumption after a deferral) held a slot of the LocalExecutor or a Celery worker.
        """
        found: dict[str, list[tuple[float, str]]] = {}
        for service in self.services:
            if service.name.split("#")[0] != "scheduler" and not service.name.startswith("worker-"):
                continue
            for line in service.log_path.read_text(errors="replace").splitlines():
                if "Workload finished" not in line:
                    continue
                fields = dict(re.findall(r"(\w+)=(\S+)", line))
                if "workload_id" in fields and "duration" in fields:
                    found.setdefault(fields["workload_id"], []).append(
                        (float(fields["duration"]), fields.get("final_state", "?"))
                    )
        return found

    def slot_seconds(self, task_instances: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Executor slot-seconds per task kind of these task instances (as the REST API lists them).

        Kinds are the last part of the task id (``submit``, ``wait``, ``publish``, ``finalize``);
        a wait's runs are split by how each ended: ``wait (deferred)`` and ``wait (success)``.
        """
        workloads = self.workload_seconds()
        totals: dict[str, float] = {}
        for ti in task_instances:
            kind = ti["task_id"].rsplit(".", 1)[-1]
            for seconds, final_state in workloads.get(ti["id"], []):
                label = f"{kind} ({final_state})" if kind == "wait" else kind
                totals[label] = totals.get(label, 0.0) + seconds
        return {kind: round(seconds, 2) for kind, seconds in totals.items()}

    def worker_names(self) -> list[str]:
        names = {s.name.split("#")[0] for s in self.services if s.name.startswith("worker-")}
        return sorted(n for n in names if self.service(n).alive())

    # -- set-up ----------------------------------------------------------------------------------

    def _check_services(self) -> None:
        if self.config != "celery":
            return
        problem = services_available(self.postgres, self.redis)
        if problem:
            raise ServicesUnavailable(problem)
        try:
            import airflow.providers.celery  # noqa: F401
            import psycopg2  # noqa: F401
            import redis  # noqa: F401
        except ImportError as exc:
            raise ServicesUnavailable(
                f"the Celery configuration needs flexflow's 'deploy' extra installed ({exc})"
            ) from None

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(exist_ok=True)
        self.logs_folder.mkdir(exist_ok=True)
        loader = self.dags_folder / LOADER_NAME
        if REPO_LOADER.exists():
            shutil.copyfile(REPO_LOADER, loader)
        else:
            loader.write_text(LOADER_TEXT)
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({ADMIN_USER: self.password}) + "\n")
        passwords.chmod(0o600)

    def _prepare_databases(self) -> None:
        if self.config != "celery":
            return
        import psycopg2
        import redis

        host, port = self.postgres
        connection = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres", connect_timeout=5)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{self.database}"')
            self._database_created = True
        except psycopg2.Error as exc:
            raise ServicesUnavailable(f"cannot create a PostgreSQL database on {host}:{port}: {exc}") from None
        finally:
            connection.close()
        # A Redis database of our own (claimed atomically; the queue name is ours too), flushed at teardown.
        for number in range(15, 0, -1):
            client = redis.Redis(host=self.redis[0], port=self.redis[1], db=number, socket_timeout=5)
            try:
                if client.dbsize() == 0 and client.set(REDIS_OWNER_KEY, self.id, nx=True, ex=24 * 3600):
                    if client.dbsize() == 1:
                        self.redis_db = number
                        break
                    client.delete(REDIS_OWNER_KEY)  # someone else was using it after all
            finally:
                client.close()
        if self.redis_db is None:
            raise ServicesUnavailable(f"no unused Redis database (1-15) on {self.redis[0]}:{self.redis[1]}")

    def _drop_databases(self) -> None:
        if self._database_created:
            import psycopg2

            host, port = self.postgres
            connection = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres", connect_timeout=5)
            try:
                connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute(  # WITH (FORCE) needs PostgreSQL 13; this works everywhere
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.database,)
                    )
                    cursor.execute(f'DROP DATABASE IF EXISTS "{self.database}"')
                self._database_created = False
            finally:
                connection.close()
        if self.redis_db is not None:
            import redis

            client = redis.Redis(host=self.redis[0], port=self.redis[1], db=self.redis_db, socket_timeout=5)
            try:
                if client.get(REDIS_OWNER_KEY) == self.id.encode():
                    client.flushdb()
                else:  # the claim expired and someone else may use the database now: remove only ours
                    for key in client.scan_iter(f"*{self.id}*"):
                        client.delete(key)
                self.redis_db = None
            finally:
                client.close()

    def _airflow_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLEXFLOW_"))}
        bundle = {
            "name": "flexflow",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(self.dags_folder), "refresh_interval": 5},
        }
        api = f"http://127.0.0.1:{self.ports.api}"
        env = {
            **base,
            MARKER: self.id,
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            # core
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "simple_auth_manager_passwords.json"),
            # the API server, on loopback
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports.api),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            # the DAG bundle: the loader, and the specs it compiles
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([bundle]),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
            "FLEXFLOW_SPECS_DIR": str(self.specs_dir),
            "FLEXFLOW_CACHE_DIR": str(self.home / "flexflow-spec-cache"),
            # quick reactions: heartbeats, and how soon a lost task or triggerer is noticed
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # A task supervisor's loop sleeps up to this long after its task process closed its sockets,
            # holding the executor slot (Airflow 3.3.2): the default 5 s costs ~3-4 s per task and per
            # deferral; 1 s gives the slot back at once (and heartbeats running tasks every second).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            # logs: served by the scheduler (LocalExecutor), workers and triggerer on ports of their own
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_folder),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.scheduler_logs),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports.triggerer_logs),
            # the API: the emulator (its URL is added once it listens)
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue if self.config == "celery" else "default",
        }
        if self.config == "local":
            env |= {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            }
        else:
            host, port = self.postgres
            database = f"postgresql+psycopg2://postgres@{host}:{port}/{self.database}"
            env |= {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{self.redis[0]}:{self.redis[1]}/{self.redis_db}",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            }
            if importlib.util.find_spec("asyncpg") is None:
                # Airflow derives an asyncpg URL for its few async queries (the dag-run "wait" endpoint,
                # async state-store reads); without the driver every process fails at import. Empty
                # turns the async engine off; a production install adds asyncpg (Airflow's postgres extra).
                env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = ""
        return env | self.extra_env

    def _start_emulator(self) -> None:
        service = Service(
            "emulator",
            [
                sys.executable,
                "-m",
                "flexflow.cli",
                "emulator",
                "--port",
                "0",
                "--api-key",
                self.api_key,
                "--queue-seconds",
                str(self.queue_seconds),
                "--processing-seconds",
                str(self.processing_seconds),
            ],
            self._env,
            self.logs_folder / "services" / "emulator.log",
            self.home,
        )
        self.services.append(service.start())

        def announced() -> str | None:
            lines = service.log_path.read_text(errors="replace").splitlines()
            return next((url for url in map(announced_url, lines) if url), None)

        url = wait_until(announced, 30, "the emulator to listen", interval=0.1, check=self.check_alive)
        self.emulator = EmulatorControl(url)
        connection = {
            "conn_type": "apiframe",
            "host": url,
            "password": self.api_key,
            "extra": {"job_link": "{base_url}/_emulator/jobs/{job_id}"},
        }
        self._env["AIRFLOW_CONN_APIFRAME_DEFAULT"] = json.dumps(connection)

    def _migrate(self) -> None:
        log_path = self.logs_folder / "services" / "db-migrate.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=self._env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
                start_new_session=True,
            )
        if result.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise HarnessError(f"airflow db migrate failed ({result.returncode}):\n{tail}")

    def _start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        starts = sum(1 for s in self.services if s.name.split("#")[0] == name)
        label = name if starts == 0 else f"{name}#{starts + 1}"
        service = Service(
            label,
            [sys.executable, "-m", "airflow", *args],
            {**self._env, **(env or {})},
            self.logs_folder / "services" / f"{label.replace('#', '-')}.log",
            self.home,
        )
        self.services.append(service.start())
        return service

    def _write_state(self) -> None:
        state = {
            "id": self.id,
            "config": self.config,
            "harness_pid": os.getpid(),
            "api": self.api_url,
            "username": ADMIN_USER,
            "password": self.password,
            "emulator": self.emulator.url if self.emulator else None,
            "database": self.database if self.config == "celery" else str(self.home / "airflow.db"),
            "services": {s.name: s.pid for s in self.services if s.alive()},
        }
        path = self.home / STATE_FILE
        path.write_text(json.dumps(state, indent=2) + "\n")
        path.chmod(0o600)

    def describe(self) -> dict[str, Any]:
        return json.loads((self.home / STATE_FILE).read_text())


@contextlib.contextmanager
def deployment(config: Config = "local", **kwargs: Any) -> Iterator[Deployment]:
    """``with deployment("celery", specs_dir=...) as d:`` (the same as ``with Deployment(...)``)."""
    with Deployment(config, **kwargs) as started:
        yield started


# -- the command ---------------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    stop = {"now": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    deployment = Deployment(
        args.config,
        specs_dir=args.specs,
        workers=args.workers,
        root=args.home,
        keep_home=args.home is not None,
        processing_seconds=args.processing_seconds,
    )
    _say(f"starting the {args.config} deployment in {deployment.home} ...")
    with deployment:
        sys.stdout.write(json.dumps(deployment.describe(), indent=2) + "\n")
        sys.stdout.flush()
        _say("up; Ctrl-C (or `down --home ...`) tears it down")
        while not stop["now"]:
            time.sleep(0.5)
            deployment.check_alive()
    if deployment.leftovers:
        _say(f"teardown had to kill stragglers: {deployment.leftovers}")
    _say("down")
    return 0


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _down(args: argparse.Namespace) -> int:
    state_path = Path(args.home) / STATE_FILE
    if not state_path.exists():
        _say(f"no running deployment in {args.home}")
        return 1
    state = json.loads(state_path.read_text())
    harness = state["harness_pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(harness, signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(harness), 120, "the harness to tear the deployment down")
    for process in marked_processes(state["id"]):  # the harness itself was killed: finish its job
        _kill_process(process, group=True)
    state_path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexflow.deploy.harness", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a deployment and keep it running until interrupted")
    up.add_argument("--config", choices=("local", "celery"), default="local")
    up.add_argument("--specs", type=Path, default=None, help="specs folder (default: the project's specs/)")
    up.add_argument("--workers", type=int, default=1, help="Celery workers (celery only)")
    up.add_argument("--home", type=Path, default=None, help="AIRFLOW_HOME to use and keep (default: a temporary one)")
    up.add_argument("--processing-seconds", type=float, default=3.0, help="the emulator's processing time per job")
    up.set_defaults(handler=_up)
    down = commands.add_parser("down", help="tear down the deployment started with `up --home`")
    down.add_argument("--home", type=Path, required=True)
    down.set_defaults(handler=_down)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
