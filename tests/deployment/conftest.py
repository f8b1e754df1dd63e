"""The deployment suite's Airflow: one deployment per configuration, shared by every test of the suite.

- ``local``: LocalExecutor on SQLite (what ``airflow standalone`` runs); needs nothing installed.
- ``celery``: CeleryExecutor, PostgreSQL metadata database, Redis broker, two Celery workers;
  skipped (saying why) when PostgreSQL on 127.0.0.1:5432 or Redis on :6379 is not reachable.

``FLEXFLOW_DEPLOY_REPORT=path.json`` writes what was measured; ``FLEXFLOW_DEPLOY_KEEP=1`` keeps each
deployment's AIRFLOW_HOME (service and task logs) for a look.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deployment.harness.databases import ServicesUnavailable, services_available
from tests.deployment.harness.deployment import Deployment
from tests.deployment.helpers import (
    BROKEN_SPECS,
    MEASURED,
    PARALLELISM,
    PAUSED_AT_START,
    SPECS,
    WORKER_CONCURRENCY,
    WORKERS,
    measured,
    write_specs,
)


@pytest.fixture(scope="package", params=["local", "celery"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    config = request.param
    if config == "celery" and (problem := services_available()):
        pytest.skip(f"Celery configuration skipped: {problem}")
    root = tmp_path_factory.mktemp(f"deploy-{config}")
    write_specs(root / "specs", root / "published")
    started = time.monotonic()
    deployment = Deployment(
        config,
        specs_dir=root / "specs",
        workers=WORKERS,
        parallelism=PARALLELISM,
        worker_concurrency=WORKER_CONCURRENCY,
        processing_seconds=10.0,
        keep_home=bool(os.environ.get("FLEXFLOW_DEPLOY_KEEP")),
    )
    try:
        deployment.start()
    except ServicesUnavailable as exc:  # e.g. PostgreSQL answers but refuses to create a database
        pytest.skip(f"Celery configuration skipped: {exc}")
    redis_db = deployment.redis_db
    try:
        measured(deployment)["startup_seconds"] = round(deployment.timings["startup"], 1)
        # Unpause the tests' own DAGs through the REST API, as an operator would (they arrive paused).
        # The examples stay paused until their test: unpaused, their schedules start runs at once.
        for dag in deployment.api.dags():
            PAUSED_AT_START[(config, dag["dag_id"])] = dag["is_paused"]
            if dag["dag_id"] in SPECS or dag["dag_id"] in BROKEN_SPECS:
                deployment.api.unpause(dag["dag_id"])
        yield deployment
    finally:
        deployment.stop()
    measured(deployment)["module_seconds"] = round(time.monotonic() - started, 1)
    measured(deployment)["teardown"] = {k: v for k, v in deployment.timings.items() if k.startswith("stop ")}
    assert deployment.remaining_processes() == [], "a process of the deployment outlived its teardown"
    assert deployment.leftovers == [], f"processes escaped their service's process group: {deployment.leftovers}"
    if config == "celery":
        assert_databases_cleaned(deployment, redis_db)
    report = os.environ.get("FLEXFLOW_DEPLOY_REPORT")
    if report:
        Path(report).write_text(json.dumps(MEASURED, indent=2) + "\n")


def assert_databases_cleaned(deployment: Deployment, redis_db: int | None) -> None:
    import psycopg2
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db or 0)
    try:
        assert list(client.scan_iter(f"*{deployment.id}*")) == [], "Redis keys of the deployment outlived it"
    finally:
        client.close()

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (deployment.database,))
            assert cursor.fetchone() is None, f"database {deployment.database} was not dropped"
    finally:
        connection.close()


@pytest.fixture
def emulator(deployment: Deployment) -> Any:
    """The deployment's emulator with no jobs, no faults and its default job durations."""
    assert deployment.emulator is not None
    deployment.emulator.reset()
    deployment.emulator.configure(queue_seconds=1.0, processing_seconds=10.0)
    return deployment.emulator
