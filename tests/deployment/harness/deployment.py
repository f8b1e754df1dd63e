"""``Deployment``: Airflow as separate services on loopback, flexflow's DAGs in it, the emulator as the API.

The ``local`` configuration runs the LocalExecutor on a SQLite file; ``celery`` runs the
CeleryExecutor on a PostgreSQL database and a Redis database of its own (:mod:`.databases`) with
one or more Celery workers. See the package's docstring for the whole picture.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import psutil

from flexflow.compiler.dag_file import DAG_FILE_NAME, dag_file_source
from flexflow.emulator.server import announced_url
from tests.deployment.harness.databases import (
    ServicesUnavailable,
    check_celery_services,
    claim_redis_database,
    create_database,
    drop_database,
    release_redis_database,
)
from tests.deployment.harness.emulator import EmulatorControl, emulator_command, emulator_environment
from tests.deployment.harness.processes import (
    MARKER,
    Service,
    descendants,
    free_port,
    kill_process,
    marked_processes,
)
from tests.deployment.harness.rest import AirflowApi
from tests.deployment.harness.waiting import HarnessError, wait_until

#: The repository: its ``specs/`` is the default specs folder.
ROOT = Path(__file__).resolve().parents[3]
STATE_FILE = "deployment.json"
ADMIN_USER = "admin"
Config = Literal["local", "celery"]


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
    :param pool_slots: slots of the pool flexflow's submit and wait tasks run in (created with
        ``flexflow pool`` after the database migration; changeable later through ``set_pool``)
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
        pool_slots: int = 32,
    ) -> None:
        if config not in ("local", "celery"):
            raise ValueError(f"config must be 'local' or 'celery', not {config!r}")
        self.config: Config = config
        self.id = uuid.uuid4().hex[:10]
        self.specs_dir = Path(specs_dir or ROOT / "specs").resolve()
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
        self.pool_slots = pool_slots
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
            if self.config == "celery":
                check_celery_services(self.postgres, self.redis)
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
            self.set_pool(self.pool_slots)
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
            kill_process(process, group=True)
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
        current = {service.role: service for service in self.services}
        for service in current.values():
            if service.process is not None and not service.alive() and not service.expected_down:
                raise HarnessError(
                    f"{service.name} exited with {service.process.returncode}; end of {service.log_path}:\n"
                    f"{service.log_tail()}"
                )

    def service(self, name: str) -> Service:
        """The newest process started under this name (``triggerer``, ``worker-1``, ...)."""
        for service in reversed(self.services):
            if service.role == name:
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
        if any(s.role == "triggerer" for s in self.services):
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

    # observing the topology (measurements: see measure.py)

    def executor_services(self) -> list[Service]:
        """The live processes that run tasks: the scheduler (LocalExecutor) or the Celery workers."""
        names = ("scheduler",) if self.config == "local" else tuple(self.worker_names())
        return [self.service(name) for name in names if self.service(name).alive()]

    def service_of(self, pid: int) -> Service | None:
        """The live service whose process tree holds ``pid`` (e.g. the Celery worker running a task)."""
        for service in reversed(self.services):
            if service.alive() and (pid == service.pid or pid in {p.pid for p in descendants(service.pid)}):
                return service
        return None

    def worker_names(self) -> list[str]:
        names = {s.role for s in self.services if s.name.startswith("worker-")}
        return sorted(n for n in names if self.service(n).alive())

    # -- set-up ----------------------------------------------------------------------------------

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(exist_ok=True)
        self.logs_folder.mkdir(exist_ok=True)
        self._write_bundle()
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({ADMIN_USER: self.password}) + "\n")
        passwords.chmod(0o600)

    def _write_bundle(self) -> None:
        """The DAG bundle: flexflow's DAG file, loading the specs folder (FLEXFLOW_SPECS_DIR names it too)."""
        (self.dags_folder / DAG_FILE_NAME).write_text(dag_file_source(str(self.specs_dir)))

    def _prepare_databases(self) -> None:
        if self.config != "celery":
            return
        create_database(self.postgres, self.database)
        self._database_created = True
        self.redis_db = claim_redis_database(self.redis, self.id)

    def _drop_databases(self) -> None:
        if self._database_created:
            drop_database(self.postgres, self.database)
            self._database_created = False
        if self.redis_db is not None:
            release_redis_database(self.redis, self.redis_db, self.id)
            self.redis_db = None

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
            # the DAG bundle: the DAG file, and the specs it compiles
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
            emulator_command(
                "--queue-seconds",
                str(self.queue_seconds),
                "--processing-seconds",
                str(self.processing_seconds),
            ),
            emulator_environment(self.api_key, base=self._env),  # not --api-key: process listings show flags
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

    def set_pool(self, slots: int) -> None:
        """``flexflow pool --slots N``, as an operator would run it, against this deployment's database."""
        log_path = self.logs_folder / "services" / "flexflow-pool.log"
        with log_path.open("ab") as log:
            result = subprocess.run(
                [sys.executable, "-m", "flexflow.cli", "pool", "--slots", str(slots)],
                env=self._env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                start_new_session=True,
            )
        if result.returncode != 0:
            raise HarnessError(f"flexflow pool failed ({result.returncode}): see {log_path}")
        self.pool_slots = slots

    def _start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        starts = sum(1 for s in self.services if s.role == name)
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
