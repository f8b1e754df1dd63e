"""Airflow itself runs the operator, sensor and trigger (dag.test()) against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexflow.emulator import EmulatorServer
from tests.airflow_helpers import load_test_dag, task_states, xcom


def run(dag_id: str) -> tuple[str, str]:
    dag_run = load_test_dag(dag_id).test()
    return dag_run.state, dag_run.run_id


def test_a_crash_after_submit_reconnects_on_retry(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    state, run_id = run("test_crash_after_submit")
    assert state == "success"
    assert task_states(airflow_db, "test_crash_after_submit", run_id)["submit"] == ("success", 2)
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1
    assert accounting["jobs_billed"] == 1
    assert accounting["submissions"] == 1, "the retry read the job from task_state_store, it did not submit"


@pytest.mark.parametrize(
    ("dag_id", "task_id"),
    [
        ("test_sensor_poke", "wait"),  # a sensor without the triggerer, holding its slot
        ("test_sensor_reschedule", "wait"),  # ... or giving it back between pokes
        ("test_submit_and_wait_deferred", "submit_and_wait"),  # one task submits and waits in the triggerer
        ("test_submit_and_wait_blocking", "submit_and_wait"),  # ... or in the task
    ],
)
def test_every_way_of_waiting_returns_the_finished_job(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path, dag_id: str, task_id: str
) -> None:
    state, run_id = run(dag_id)
    assert state == "success"
    [job] = xcom(airflow_db, dag_id, run_id, task_id)
    assert job["status"] == "COMPLETED"
    assert job["images"][0].startswith(emulator.url)
    assert job["credit_cost"] == 5
    assert emulator.accounting()["jobs_billed"] == 1


def test_a_failed_job_fails_the_wait_without_retries(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    emulator.faults.add({"fault": "moderation", "count": 1})
    state, run_id = run("test_failed_job")
    assert state == "failed"
    states = task_states(airflow_db, "test_failed_job", run_id)
    assert states["submit"] == ("success", 1)
    assert states["wait"] == ("failed", 1), "a FAILED job is not waited for again"
    output = "".join(capfd.readouterr())
    assert "ended FAILED: Content moderation" in output, "the API's error text is in the task log"
    assert "clear the submit task" in output
    assert emulator.accounting()["jobs_billed"] == 0


def test_an_invalid_request_fails_without_a_call(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    state, run_id = run("test_invalid_request")
    assert state == "failed"
    assert task_states(airflow_db, "test_invalid_request", run_id)["submit"] == ("failed", 1)
    output = "".join(capfd.readouterr())
    assert "fluxParams.guidance: guidance must be a number from 1.5 to 10 in steps of 0.1" in output
    assert emulator.accounting()["submissions"] == 0


def test_a_prompt_that_renders_differently_each_try_bills_one_job_per_image(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    # Every submit attempt of the first tries loses its response (the job is created, the answer never
    # arrives): each try runs out of its 5 attempts and the task is retried, rendering a new prompt.
    emulator.faults.add({"fault": "lost_response", "count": 12, "route": "submit"})
    state, run_id = run("test_clock_prompt")
    assert state == "success"
    states = task_states(airflow_db, "test_clock_prompt", run_id)
    assert max(states[f"submit[{i}]"][1] for i in range(3)) >= 2, "a submit task was retried"
    accounting = emulator.accounting()
    assert accounting["faults_injected"] == {"lost_response": 12}
    assert accounting["submissions"] > 3, "requests were sent again"
    assert accounting["jobs_created"] == accounting["jobs_billed"] == 3, "one job per image"
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}
    requests = xcom(airflow_db, "test_clock_prompt", run_id, "submit", key="request")
    prompts = {request["prompt"] for request in requests}
    assert len(prompts) == 3, "each image kept the prompt of its first render"
    received = {job.body["prompt"] for job in list(emulator.state.jobs.values())}
    assert received == prompts
