"""What flexflow stores in Airflow's database survives an upgrade: trigger rows, trigger events, XComs.

The stored forms of flexflow 0.1 are written out literally here (as 0.1 serialized them), so a change
that breaks a job waiting in the triggerer across an upgrade fails this file. The rule the code keeps
is written in flexflow/airflow/outcome.py: stored shapes are only ever extended.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from flexflow.airflow.operators import JobRecord
from flexflow.airflow.outcome import JobOutcome
from flexflow.airflow.sensors import FluxJobSensor
from flexflow.client import FluxClient
from flexflow.emulator import EmulatorServer
from tests.conftest import SECRET_KEY, flux_request

#: A trigger row as flexflow 0.1 wrote it (classpath and kwargs of FluxJobTrigger.serialize()).
TRIGGER_ROW_0_1 = (
    "flexflow.airflow.triggers.FluxJobTrigger",
    {
        "job_id": "<job>",
        "conn_id": "apiframe_default",
        "deadline": 0.0,
        "submitted_at": 0.0,
        "poll_interval": 0.05,
        "max_poll_interval": 30.0,
    },
)
#: 0.1's trigger event of a finished job, and its XCom (the job itself, Job.to_dict()).
JOB_0_1 = {
    "id": "j1",
    "status": "COMPLETED",
    "model": "flux-2-flex",
    "progress": 100,
    "result_urls": ["http://127.0.0.1:1/_files/j1/0.png"],
    "error": None,
    "credit_cost": 5,
    "expired": False,
    "created_at": "2026-11-20T10:00:00Z",
    "completed_at": "2026-11-20T10:00:20Z",
    "webhook_status": None,
    "request_id": "req_1",
}
EVENT_0_1 = {"status": "COMPLETED", "job_id": "j1", "job": JOB_0_1, "message": None}
TIMEOUT_EVENT_0_1 = {"status": "TIMEOUT", "job_id": "j1", "job": None, "message": "no result after 9 polls"}
FAILED_EVENT_0_1 = {"status": "FAILED", "job_id": "j1", "job": {**JOB_0_1, "status": "FAILED", "error": "boom"}}
#: 0.1's task_state_store record of a submit task.
RECORD_0_1 = {"job_id": "j1", "generation": 0, "idempotency_key": "flexflow-abc"}

EXPECTED = JobOutcome("COMPLETED", "j1", ("http://127.0.0.1:1/_files/j1/0.png",), None, 5, False)


async def test_a_trigger_row_written_by_0_1_runs_to_the_same_event(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    with FluxClient(emulator.url, SECRET_KEY) as client:
        job_id = client.submit(flux_request())
    classpath, kwargs = TRIGGER_ROW_0_1
    module, name = classpath.rsplit(".", 1)
    now = time.time()
    kwargs = {**kwargs, "job_id": job_id, "deadline": now + 30, "submitted_at": now}
    trigger = getattr(importlib.import_module(module), name)(**kwargs)
    assert trigger.serialize() == (classpath, kwargs), "the same row comes back: nothing renamed or dropped"
    [event] = [event.payload async for event in trigger.run()]
    outcome = JobOutcome.from_stored(event)
    assert (outcome.status, outcome.job_id, len(outcome.images)) == ("COMPLETED", job_id, 1)


@pytest.mark.parametrize("stored", [EVENT_0_1, JOB_0_1, EXPECTED.to_stored()], ids=["event-0.1", "xcom-0.1", "now"])
def test_every_stored_shape_reads_as_the_same_outcome(stored: dict[str, Any]) -> None:
    assert JobOutcome.from_stored(stored) == EXPECTED


def test_events_of_0_1_end_a_task_as_they_did() -> None:
    sensor = FluxJobSensor(task_id="wait", job_id="j1")
    assert JobOutcome.from_stored(sensor.execute_complete({}, EVENT_0_1)) == EXPECTED
    with pytest.raises(AirflowSensorTimeout, match="no result after 9 polls"):
        sensor.execute_complete({}, TIMEOUT_EVENT_0_1)
    with pytest.raises(AirflowFailException, match="ended FAILED: boom"):
        sensor.execute_complete({}, FAILED_EVENT_0_1)


def test_the_current_outcome_round_trips_and_only_extends_0_1() -> None:
    stored = EXPECTED.to_stored()
    assert JobOutcome.from_stored(stored) == EXPECTED
    assert {"status", "job_id"} <= set(stored), "the fields 0.1's readers keyed on are still there"


def test_a_0_1_job_record_is_rendered_again_with_the_same_key_material() -> None:
    """0.1 kept no request body: the next try renders it (as 0.1 did) and derives the same key from it."""
    assert JobRecord.read(RECORD_0_1) is None
    record = JobRecord({"prompt": "p"}, "flexflow-k", 1, "j2", 10.0)
    assert JobRecord.read(asdict(record)) == record
