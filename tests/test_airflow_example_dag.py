"""The hand-written example DAG runs green with dag.test() against the emulator, faults included,
and leaves the API key nowhere: not in logs, XCom, rendered fields, trigger rows or the database."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from flexflow.emulator import EmulatorServer
from tests.airflow_helpers import load_module, rows, task_states, xcom
from tests.conftest import ROOT, SECRET_KEY

DAG_ID = "flexflow_example_hand_written"


def run_example() -> tuple[str, str]:
    dag = load_module(ROOT / "dags/examples/hand_written_flux.py").dag
    dag_run = dag.test()
    return dag_run.state, dag_run.run_id


def test_example_dag_runs_green(emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path) -> None:
    state, run_id = run_example()
    assert state == "success"
    assert set(task_states(airflow_db, DAG_ID, run_id).values()) == {("success", 1)}
    [url] = xcom(airflow_db, DAG_ID, run_id, "report")
    assert httpx2.get(url).headers["content-type"] == "image/png"
    [job_id] = xcom(airflow_db, DAG_ID, run_id, "submit")
    for task_id in ("submit", "wait"):
        [link] = xcom(airflow_db, DAG_ID, run_id, task_id, "_link_ApiframeJobLink")
        assert link == f"{emulator.url}/_emulator/jobs/{job_id}"
    assert httpx2.get(link).json()["status"] == "COMPLETED", "the Apiframe job link opens the job"
    assert emulator.accounting()["jobs_billed"] == 1


def test_faults_still_bill_exactly_one_job_and_the_key_leaks_nowhere(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    emulator.faults.add(
        {"fault": "rate_limit", "count": 2, "route": "submit", "retry_after": 0},
        {"fault": "http_503", "count": 1, "route": "submit"},
        {"fault": "lost_response", "count": 1, "route": "submit"},
        {"fault": "http_502", "count": 2, "route": "poll"},
        {"fault": "rate_limit", "count": 1, "route": "poll", "retry_after": 0},
    )
    state, run_id = run_example()
    assert state == "success"
    accounting = emulator.accounting()
    assert accounting["faults_injected"] == {"rate_limit": 3, "http_503": 1, "lost_response": 1, "http_502": 2}
    assert accounting["jobs_created"] == 1
    assert accounting["jobs_billed"] == 1
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}

    logs = "".join(capfd.readouterr())
    assert "submitted job" in logs, "the task log was captured"
    assert SECRET_KEY not in logs
    stored = rows(airflow_db, "SELECT key, value FROM xcom WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
    assert {key for key, _ in stored} >= {"return_value", "request", "_link_ApiframeJobLink"}
    assert all(SECRET_KEY not in str(value) for _, value in stored)
    rendered = rows(airflow_db, "SELECT rendered_fields FROM rendered_task_instance_fields WHERE run_id = ?", run_id)
    assert rendered, "rendered fields were stored"
    assert all(SECRET_KEY not in str(fields) for (fields,) in rendered)
    assert all(SECRET_KEY not in str(row) for row in rows(airflow_db, "SELECT * FROM trigger"))
    for file in [airflow_db, *airflow_db.parent.glob("airflow.db-*"), *(airflow_db.parent / "logs").rglob("*")]:
        if file.is_file():
            assert SECRET_KEY.encode() not in file.read_bytes(), f"the key is in {file}"
