"""Shared fixtures: a real emulator on a loopback port, clients pointed at it, and Airflow pointed at it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flexflow.client import AsyncFluxClient, FluxClient, RetryPolicy
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorServer

ROOT = Path(__file__).resolve().parents[1]
#: The S3 fixtures (``s3_endpoint``, ``s3_bucket``: moto's S3 server on loopback), for the s3 publishing tests.
pytest_plugins = ["tests.s3_helpers"]

# Airflow reads its home when first imported: give the test session a private one before that.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="flexflow-test-airflow-"))
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
# dag.test() runs a DAG only once it is found in a bundle: the project's dags/ and the tests' own.
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {"path": path}}
        for name, path in (("dags-folder", str(ROOT / "dags")), ("flexflow-tests", str(ROOT / "tests" / "dags")))
    ]
)
os.environ.pop("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", None)
os.environ["FLEXFLOW_CACHE_DIR"] = str(AIRFLOW_HOME / "flexflow-spec-cache")

#: The API key of Airflow tests: distinctive, so a test can prove it never lands anywhere.
SECRET_KEY = "afk_live_7Q2xTEST_SECRET_do_not_leak_9f3b"


def fast_retry(**overrides: float) -> RetryPolicy:
    """Retries with tiny, seeded backoff so tests exercise every path without waiting."""
    settings = {"max_attempts": 4, "max_elapsed": 30.0, "backoff_base": 0.01, "backoff_cap": 0.05, **overrides}
    return RetryPolicy(jitter=random.Random(7), **settings)


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(queue_seconds=0.0, processing_seconds=0.0)) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> EmulatorServer:
    """The session's emulator, reset: no jobs, no faults, instant jobs, default settings."""
    emulator_server.wait_idle()  # a slow request an earlier test's client gave up on lands before the reset
    emulator_server.state.reset()
    emulator_server.faults.reset(seed=0)
    emulator_server.config.update(
        {
            "api_keys": [DEFAULT_TEST_KEY],
            "inactive_keys": [],
            "queue_seconds": 0.0,
            "processing_seconds": 0.0,
            "retention_seconds": 24 * 3600.0,
            "credits": None,
            "result_shape": "images",
            "max_concurrent_jobs": None,
        }
    )
    return emulator_server


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[FluxClient]:
    with FluxClient(emulator.url, DEFAULT_TEST_KEY, timeout=5.0, retry=fast_retry()) as flux_client:
        yield flux_client


@pytest.fixture
async def async_client(emulator: EmulatorServer) -> AsyncIterator[AsyncFluxClient]:
    async with AsyncFluxClient(emulator.url, DEFAULT_TEST_KEY, timeout=5.0, retry=fast_retry()) as flux_client:
        yield flux_client


def flux_request(prompt: str = "a red bicycle", **flux: object) -> dict[str, object]:
    return {"prompt": prompt, "model": "flux-2-flex", "fluxParams": flux}


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database in the session's private AIRFLOW_HOME."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
    )
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture
def apiframe_connection(emulator: EmulatorServer, airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``apiframe_default`` pointing at the emulator, with a key only the emulator and the connection know."""
    emulator.config.update({"api_keys": [SECRET_KEY]})
    connection = {
        "conn_type": "apiframe",
        "host": emulator.url,
        "password": SECRET_KEY,
        "extra": {"max_attempts": 5, "job_link": "{base_url}/_emulator/jobs/{job_id}"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_APIFRAME_DEFAULT", json.dumps(connection))
    return "apiframe_default"


@dataclass(frozen=True)
class EmulatedAirflow:
    """Airflow whose ``apiframe_default`` is the reset session emulator, and what its ``dag.test()`` runs leave.

    The emulator's accounting and faults, the metadata database (task states, XComs, Asset events) and
    what the runs printed.
    """

    emulator: EmulatorServer
    db: Path
    connection_id: str
    capfd: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture

    def output(self) -> str:
        """What was printed since the last call: the tasks' output (capfd) and Airflow's own log records (caplog)."""
        text = "".join(self.capfd.readouterr()) + self.caplog.text
        self.caplog.clear()
        return text


@pytest.fixture
def emulated_airflow(
    emulator: EmulatorServer,
    apiframe_connection: str,
    airflow_db: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> EmulatedAirflow:
    """What a test running a DAG through Airflow against the emulator needs, in one fixture."""
    return EmulatedAirflow(emulator, airflow_db, apiframe_connection, capfd, caplog)


@pytest.fixture
def spec_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty specs folder that the tests' DAG-folder loader (``tests/dags/flexflow_reuse_test_dags.py``)
    compiles, with a spec cache of its own, outside any DAG-parsing context."""
    from flexflow.compiler.loader import SPECS_DIR_ENV
    from flexflow.spec.cache import CACHE_DIR_ENV

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    monkeypatch.setenv(SPECS_DIR_ENV, str(tmp_path / "specs"))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    (tmp_path / "specs").mkdir()
    return tmp_path / "specs"
