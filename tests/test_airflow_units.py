"""Provider-style unit tests: deferral, events, the trigger against the emulator, serialization."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout, TaskDeferred
from airflow.triggers.base import TriggerEvent

from flexflow.airflow.hooks import ApiSettings, FluxHook, Reuse, shared_clients
from flexflow.airflow.keys import JOB_LINK_XCOM_KEY, JOB_STATE_KEY
from flexflow.airflow.operators import FluxFlexOperator, idempotency_key
from flexflow.airflow.outcome import JobOutcome
from flexflow.airflow.sensors import FluxJobSensor
from flexflow.airflow.triggers import FluxJobTrigger
from flexflow.client import FluxClient
from flexflow.client.polling import PollSchedule
from flexflow.emulator import EmulatorServer
from tests.conftest import SECRET_KEY, fast_retry, flux_request

FAST = 0.02


class TaskInstanceStub:
    """The few task-instance attributes the operators read; records XCom pushes."""

    def __init__(self, task_id: str = "submit", map_index: int = -1, try_number: int = 1) -> None:
        self.dag_id, self.run_id, self.task_id = "unit_dag", "manual__1", task_id
        self.map_index, self.try_number = map_index, try_number
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class StateStore(dict[str, Any]):
    """task_state_store's get/set on a dict (the real one talks to the supervisor process)."""

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self[key] = value


def context(ti: TaskInstanceStub | None = None, store: StateStore | None = None) -> dict[str, Any]:
    return {"ti": ti or TaskInstanceStub(), "task_state_store": store}


def trigger_for(job_id: str, deadline_in: float = 30.0, **kwargs: Any) -> FluxJobTrigger:
    return FluxJobTrigger(job_id, "apiframe_default", time.time() + deadline_in, poll_interval=FAST, **kwargs)


async def first_event(trigger: FluxJobTrigger) -> dict[str, Any]:
    try:
        async for event in trigger.run():
            return event.payload
    finally:
        await trigger.cleanup()
    raise AssertionError("the trigger ended without an event")


def submit(emulator: EmulatorServer, **flux: Any) -> str:
    with FluxClient(emulator.url, SECRET_KEY) as client:
        return client.submit(flux_request(**flux))


# -- operator ----------------------------------------------------------------------------------


def test_execute_submits_and_pushes_request_and_link(emulator: EmulatorServer, apiframe_connection: str) -> None:
    ti = TaskInstanceStub()
    operator = FluxFlexOperator(task_id="submit", prompt="a kite", flux={"seed": 1})
    job_id = operator.execute(context(ti))
    assert ti.xcom["request"]["fluxParams"]["seed"] == 1
    assert ti.xcom["request"]["fluxParams"]["steps"] == 28, "defaults are sent explicitly"
    assert ti.xcom[JOB_LINK_XCOM_KEY] == f"{emulator.url}/_emulator/jobs/{job_id}"
    assert SECRET_KEY not in json.dumps(ti.xcom)


def test_execute_defers_with_the_expected_trigger(emulator: EmulatorServer, apiframe_connection: str) -> None:
    emulator.config.update({"processing_seconds": 30.0})
    operator = FluxFlexOperator(
        task_id="submit", prompt="a kite", wait_for_completion=True, deferrable=True, poll_interval=3.0
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, FluxJobTrigger)
    assert deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "flexflow.airflow.triggers.FluxJobTrigger"
    assert kwargs["conn_id"] == "apiframe_default"
    assert kwargs["poll_interval"] == 3.0
    assert kwargs["job_id"] in emulator.accounting()["polls_per_job"]


def test_a_deferrable_sensor_defers_with_its_timeout_as_deadline(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    emulator.config.update({"processing_seconds": 30.0})
    job_id = submit(emulator)
    sensor = FluxJobSensor(task_id="wait", job_id=job_id, timeout=600, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context(TaskInstanceStub("wait")))
    kwargs = deferred.value.trigger.serialize()[1]
    assert kwargs["job_id"] == job_id
    assert 599 < kwargs["deadline"] - time.time() <= 600


def test_deferrable_defaults_to_airflows_setting_as_providers_do() -> None:
    import subprocess
    import sys

    code = (
        "from flexflow.airflow.sensors import FluxJobSensor; from flexflow.airflow.operators import FluxFlexOperator;"
        "print(FluxJobSensor(task_id='w', job_id='j').deferrable, FluxFlexOperator(task_id='s', prompt='p').deferrable)"
    )
    for setting, expected in (("True", "True True"), ("False", "False False")):
        env = {**__import__("os").environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": setting}
        shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert shown.stdout.split("\n")[-2] == expected


def test_an_invalid_request_fails_before_any_call(emulator: EmulatorServer, apiframe_connection: str) -> None:
    operator = FluxFlexOperator(task_id="submit", prompt="x", flux={"image_prompt_strength": 0.17})
    with pytest.raises(AirflowFailException, match=r"fluxParams\.image_prompt_strength"):
        operator.execute(context())
    assert emulator.accounting()["submissions"] == 0


def test_idempotency_key_is_deterministic_per_logical_request() -> None:
    body = flux_request(seed=1)
    key = idempotency_key("d", "r", "t", -1, body, 0)
    assert key == idempotency_key("d", "r", "t", -1, dict(reversed(body.items())), 0)
    assert len(key) <= 255
    others = {
        idempotency_key("d2", "r", "t", -1, body, 0),
        idempotency_key("d", "r2", "t", -1, body, 0),
        idempotency_key("d", "r", "t2", -1, body, 0),
        idempotency_key("d", "r", "t", 3, body, 0),
        idempotency_key("d", "r", "t", -1, flux_request(seed=2), 0),
        idempotency_key("d", "r", "t", -1, body, 1),
    }
    assert key not in others
    assert len(others) == 6


def test_a_retry_reconnects_to_the_stored_job(emulator: EmulatorServer, apiframe_connection: str) -> None:
    emulator.config.update({"processing_seconds": 30.0})
    store = StateStore()
    operator = FluxFlexOperator(task_id="submit", prompt="retry me")
    first = operator.execute(context(TaskInstanceStub(try_number=1), store))
    second = operator.execute(context(TaskInstanceStub(try_number=2), store))
    assert first == second
    assert store[JOB_STATE_KEY]["generation"] == 0
    assert emulator.accounting()["submissions"] == 1


def test_without_a_state_store_the_key_still_prevents_a_second_job(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    operator = FluxFlexOperator(task_id="submit", prompt="no store")
    first = operator.execute(context(TaskInstanceStub(try_number=1)))
    second = operator.execute(context(TaskInstanceStub(try_number=2)))
    assert first == second
    accounting = emulator.accounting()
    assert accounting["submissions"] == 2
    assert accounting["jobs_created"] == 1


@pytest.mark.parametrize(
    "outcome",
    ["fail", "cancel", "expired_result", "missing_result", "wrong_content_type", "truncated_image", "corrupt_image"],
)
def test_a_try_after_a_failed_or_expired_job_submits_a_new_generation(
    emulator: EmulatorServer, apiframe_connection: str, outcome: str
) -> None:
    emulator.faults.add({"fault": outcome, "count": 1})
    store = StateStore()
    operator = FluxFlexOperator(task_id="submit", prompt="deliberate resubmission")
    first = operator.execute(context(TaskInstanceStub(try_number=1), store))
    second = operator.execute(context(TaskInstanceStub(try_number=2), store))
    assert first != second
    assert store[JOB_STATE_KEY]["generation"] == 1
    assert emulator.accounting()["jobs_created"] == 2


def completed_job(emulator: EmulatorServer, fault: str | None = None, **flux: Any) -> tuple[str, dict[str, Any]]:
    """A finished job (its outcome the given fault) and the request it was submitted with."""
    if fault:
        emulator.faults.add({"fault": fault, "count": 1})
    request = flux_request(prompt="reuse check", resolution="0.5MP", output_format="png", **flux)
    return submit(emulator, resolution="0.5MP", output_format="png", prompt="reuse check", **flux), request


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("missing_result", "answered 404 (the result has expired or was purged)"),
        ("wrong_content_type", "is not a png image"),
        ("truncated_image", "is not a readable png image"),
        ("corrupt_image", "is not a readable png image"),
        ("expired_result", "but its results expired"),
    ],
)
def test_a_completed_job_whose_results_are_unusable_is_not_reused_and_says_what_it_costs(
    emulator: EmulatorServer, apiframe_connection: str, fault: str, why: str
) -> None:
    job_id, request = completed_job(emulator, fault)
    with FluxClient(emulator.url, SECRET_KEY) as client:
        cost = client.get_job(job_id).credit_cost
    assert cost
    reuse = FluxHook().reuse(job_id, request)
    assert not reuse.reusable
    assert f"completed and was billed {cost} credits, but its result" in reuse.why
    assert why in reuse.why
    assert reuse.why.endswith(f"submitting one new job deliberately, about {cost} credits")


def test_a_completed_job_with_usable_results_is_reused(emulator: EmulatorServer, apiframe_connection: str) -> None:
    emulator.faults.add({"fault": "several_images", "count": 1, "images": 2})
    job_id, request = completed_job(emulator)
    reuse = FluxHook().reuse(job_id, request)
    assert reuse == Reuse(True, "completed, its 2 result(s) checked and usable")
    assert FluxHook().reuse(job_id).reusable, "without the request, format and size are not known but the rest is"


def test_results_of_another_size_than_requested_are_unusable(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    job_id, request = completed_job(emulator)
    request["fluxParams"]["resolution"] = "1MP"  # not what the job was given: its images are the wrong size
    reuse = FluxHook().reuse(job_id, request)
    assert not reuse.reusable
    assert "expected" in reuse.why


def test_results_that_cannot_be_checked_now_keep_the_job(
    emulator: EmulatorServer, apiframe_connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient fault outlasting the retries is "cannot tell": the paid job is kept, nothing is paid again."""
    monkeypatch.setattr(FluxHook, "result_retry", fast_retry(max_attempts=2))
    job_id, request = completed_job(emulator)
    emulator.faults.add({"fault": "http_503", "count": 2, "route": "file"})
    reuse = FluxHook().reuse(job_id, request)
    assert reuse.reusable
    assert "cannot be checked now" in reuse.why and "answered 503" in reuse.why
    assert emulator.accounting()["jobs_created"] == 1


def test_a_cleared_submit_after_a_lost_result_pays_for_exactly_one_new_job(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    """The path a cleared submit task takes, through the operator and a task_state_store, without Airflow's
    scheduler: the stored job completed but its result is missing, so the cleared try submits once anew, and
    a further try reconnects to that new job."""
    emulator.faults.add({"fault": "missing_result", "count": 1})
    store = StateStore()
    operator = FluxFlexOperator(task_id="submit", prompt="lost result", flux={"resolution": "0.5MP"})
    first = operator.execute(context(TaskInstanceStub(try_number=1), store))
    cleared = operator.execute(context(TaskInstanceStub(try_number=2), store))
    again = operator.execute(context(TaskInstanceStub(try_number=3), store))
    assert first != cleared == again
    assert store[JOB_STATE_KEY]["generation"] == 1
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == accounting["jobs_billed"] == 2, "the lost one and ONE new one"


@pytest.mark.parametrize(
    ("status", "raises", "match"),
    [
        ("FAILED", AirflowFailException, "ended FAILED: provider exploded"),
        ("CANCELLED", AirflowFailException, "ended CANCELLED"),
        ("TIMEOUT", AirflowSensorTimeout, "not finished by the timeout"),
        ("ERROR", AirflowException, "waiting for job j1 failed: 404"),
    ],
)
def test_execute_complete_maps_each_event(status: str, raises: type[Exception], match: str) -> None:
    error = "404 Job not found" if status == "ERROR" else "provider exploded"
    event = JobOutcome(status, "j1", error=error).to_stored()
    for task in (FluxJobSensor(task_id="w", job_id="j1"), FluxFlexOperator(task_id="s", prompt="p")):
        with pytest.raises(raises, match=match):
            task.execute_complete({}, event)


def test_execute_complete_returns_the_finished_job() -> None:
    outcome = JobOutcome("COMPLETED", "j1", ("http://x/0.png",), credit_cost=5)
    returned = FluxJobSensor(task_id="w", job_id="j1").execute_complete({}, outcome.to_stored())
    assert JobOutcome.from_stored(returned) == outcome
    assert not issubclass(AirflowException, AirflowFailException), "ERROR events stay retryable"


# -- trigger -----------------------------------------------------------------------------------


def test_trigger_serialize_round_trips() -> None:
    trigger = FluxJobTrigger("j", "c", 123.5, 100.0, 2.5, 40.0)
    classpath, kwargs = trigger.serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs, "only JSON-native kwargs"
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        (None, "COMPLETED", None),
        ("fail", "FAILED", "Provider error"),
        ("moderation", "FAILED", "Content moderation"),
        ("cancel", "CANCELLED", "cancelled"),
    ],
)
async def test_trigger_fires_each_terminal_status(
    emulator: EmulatorServer, apiframe_connection: str, fault: str | None, status: str, error: str | None
) -> None:
    if fault:
        emulator.faults.add({"fault": fault, "count": 1})
    job_id = submit(emulator)
    event = await first_event(trigger_for(job_id))
    assert event["status"] == status
    assert event["job_id"] == job_id
    if error:
        assert error in event["error"]
    else:
        assert event["images"]


@pytest.mark.parametrize("fault", ["rate_limit", "http_500", "http_502", "http_503", "http_504", "drop", "slow"])
async def test_trigger_rides_out_transient_faults(
    emulator: EmulatorServer, apiframe_connection: str, fault: str
) -> None:
    job_id = submit(emulator)
    # More faults than the client retries (5 attempts): the trigger keeps polling until the deadline.
    emulator.faults.add({"fault": fault, "count": 7, "route": "poll", "retry_after": 0, "delay": 0.3})
    monkey_timeout(emulator, apiframe_connection)
    event = await first_event(trigger_for(job_id))
    assert event["status"] == "COMPLETED"
    assert emulator.accounting()["faults_injected"] == {fault: 7}


def monkey_timeout(emulator: EmulatorServer, conn_id: str) -> None:
    """A short request timeout on the connection, so the slow fault becomes a client timeout."""
    import os

    connection = json.loads(os.environ["AIRFLOW_CONN_APIFRAME_DEFAULT"])
    connection["extra"].update({"request_timeout": 0.1})
    os.environ["AIRFLOW_CONN_APIFRAME_DEFAULT"] = json.dumps(connection)


async def test_trigger_reports_unknown_jobs_and_times_out(emulator: EmulatorServer, apiframe_connection: str) -> None:
    unknown = await first_event(trigger_for("3f0c2a59-1111-4c9e-9d55-0123456789ab"))
    assert unknown["status"] == "ERROR"
    assert "404" in unknown["error"]
    emulator.config.update({"processing_seconds": 60.0})
    late = await first_event(trigger_for(submit(emulator), deadline_in=0.3))
    assert late["status"] == "TIMEOUT"
    assert "last status PROCESSING" in late["error"]


async def test_trigger_without_a_usable_connection_reports_it(
    monkeypatch: pytest.MonkeyPatch, airflow_db: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_APIFRAME_DEFAULT", json.dumps({"conn_type": "apiframe", "host": "http://x"}))
    event = await first_event(trigger_for("j"))
    assert event["status"] == "ERROR"
    assert "no API key" in event["error"]


async def test_triggers_share_one_client_per_loop_and_close_it(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    emulator.config.update({"processing_seconds": 2.0})
    jobs = [submit(emulator, seed=i) for i in range(40)]
    triggers = [trigger_for(job_id) for job_id in jobs]
    tasks = [asyncio.ensure_future(first_event(t)) for t in triggers]
    while shared_clients.users("apiframe_default") < 40 and not any(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    assert shared_clients.users("apiframe_default") == 40
    client = await shared_clients.client("apiframe_default")
    events = await asyncio.gather(*tasks)
    assert {e["status"] for e in events} == {"COMPLETED"}
    assert shared_clients.users("apiframe_default") == 0
    assert client._http.is_closed, "the last cleanup closed the shared client"


def test_poll_schedule_grows_and_caps() -> None:
    schedule = PollSchedule(poll_interval=2.0, max_poll_interval=30.0)
    waits = [schedule.interval(n, job_age=10.0) for n in range(6)]
    assert waits == [2.0, 3.0, 4.5, 4.5, 4.5, 4.5]
    assert schedule.interval(10, job_age=120.0) == 30.0
    assert PollSchedule(poll_interval=10.0).interval(0, job_age=0) == 10.0
    spreads = {PollSchedule.for_job(f"job-{n}", 2.0, 30.0).spread for n in range(200)}
    assert len(spreads) == 200, "jobs submitted together do not poll in lockstep"
    assert all(-0.1 <= s <= 0.1 for s in spreads)
    assert PollSchedule.for_job("job-1", 2.0, 30.0) == PollSchedule.for_job("job-1", 2.0, 30.0), "deterministic"


def test_a_completed_job_without_images_fails_the_task() -> None:
    with pytest.raises(AirflowFailException, match="without result URLs"):
        FluxJobSensor(task_id="w", job_id="j").finish(JobOutcome("COMPLETED", "j"))


def test_trigger_event_payload_is_json() -> None:
    stored = JobOutcome("COMPLETED", "j", ("http://x/0.png",), None, 5, False).to_stored()
    payload = TriggerEvent(stored).payload
    assert json.loads(json.dumps(payload)) == payload


# -- hook and provider ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "base_url"),
    [
        (None, None, "https://api.apiframe.ai"),
        ("api.example.com", None, "https://api.example.com"),
        ("127.0.0.1", 8787, "http://127.0.0.1:8787"),
        ("localhost", 9000, "http://localhost:9000"),
        ("http://127.0.0.1:8787/", None, "http://127.0.0.1:8787"),
    ],
)
def test_connection_host_is_the_base_url(
    monkeypatch: pytest.MonkeyPatch, airflow_db: Path, host: str | None, port: int | None, base_url: str
) -> None:
    connection = {"conn_type": "apiframe", "host": host, "port": port, "password": SECRET_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_TEST", json.dumps(connection))
    settings = FluxHook("flux_test").settings
    assert settings.base_url == base_url
    assert SECRET_KEY not in repr(settings)
    assert settings.api_key.reveal() == SECRET_KEY


def test_a_connection_without_key_says_where_to_put_it(monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_TEST", json.dumps({"conn_type": "apiframe"}))
    with pytest.raises(AirflowFailException, match="password field \\(shown as 'API key'\\)"):
        _ = FluxHook("flux_test").settings


def test_a_missing_connection_fails_the_task_without_retries(airflow_db: Path) -> None:
    with pytest.raises(AirflowFailException, match="airflow connections add nowhere --conn-type apiframe"):
        _ = FluxHook("nowhere").settings


def test_hook_masks_the_key(monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    monkeypatch.setenv("AIRFLOW_CONN_FLUX_TEST", json.dumps({"conn_type": "apiframe", "password": SECRET_KEY}))
    _ = FluxHook("flux_test").settings
    assert SECRET_KEY not in str(redact(f"key={SECRET_KEY}"))


def test_provider_info_is_valid_and_declares_the_connection_form() -> None:
    from importlib.metadata import entry_points
    from importlib.resources import files

    from jsonschema import Draft7Validator

    [entry] = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("flexflow")]
    info = entry.load()()
    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    Draft7Validator(schema).validate(info)
    [connection] = info["connection-types"]
    assert connection["connection-type"] == "apiframe"
    assert connection["hook-name"] == "Apiframe (Flux)"
    assert connection["ui-field-behaviour"]["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert connection["ui-field-behaviour"]["placeholders"]["host"] == "https://api.apiframe.ai"
    assert set(connection["ui-field-behaviour"]["hidden-fields"]) == {"schema", "login", "port", "extra"}


def test_airflow_sees_the_connection_type(airflow_db: Path) -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "flexflow" in manager.providers
    behaviour = manager.field_behaviours["apiframe"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    widgets = manager.connection_form_widgets
    assert {"extra__apiframe__request_timeout", "extra__apiframe__max_attempts", "extra__apiframe__job_link"} <= set(
        widgets
    )


def test_settings_link_for() -> None:
    from flexflow.client import ApiKey

    settings = ApiSettings("http://h", ApiKey("k"), job_link="{base_url}/jobs/{job_id}")
    assert settings.link_for("abc") == "http://h/jobs/abc"


def airflow_cli_json(*command: str) -> str:
    import os
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "airflow", *command, "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    return shown.stdout


def test_airflow_providers_list_shows_flexflow(airflow_db: Path) -> None:
    listed = airflow_cli_json("providers", "list")
    providers = {p["package_name"]: p for p in json.loads(listed[listed.index("[") :])}
    assert "flexflow" in providers
    hooks = airflow_cli_json("providers", "hooks")
    assert '"apiframe"' in hooks
    assert "Apiframe (Flux)" in hooks


def test_sensor_on_a_finished_job_returns_without_deferring(emulator: EmulatorServer, apiframe_connection: str) -> None:
    job_id = submit(emulator)
    sensor = FluxJobSensor(task_id="wait", job_id=job_id, deferrable=True)
    job = sensor.execute(context(TaskInstanceStub("wait")))
    assert job["status"] == "COMPLETED"
    assert job["job_id"] == job_id


def test_operator_reconnecting_to_a_finished_job_returns_without_deferring(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    emulator.config.update({"processing_seconds": 0.3})
    store = StateStore()
    operator = FluxFlexOperator(task_id="submit", prompt="reconnect", wait_for_completion=True, deferrable=True)
    with pytest.raises(TaskDeferred):
        operator.execute(context(TaskInstanceStub(try_number=1), store))
    job_id = store[JOB_STATE_KEY]["job_id"]
    time.sleep(0.4)  # the job finishes while the try is gone (say, its worker died)
    outcome = operator.execute(context(TaskInstanceStub(try_number=2), store))  # no TaskDeferred
    assert outcome["status"] == "COMPLETED"
    assert outcome["job_id"] == job_id
    assert emulator.accounting()["submissions"] == 1


def test_a_later_try_sends_the_first_render_with_its_key(emulator: EmulatorServer, apiframe_connection: str) -> None:
    emulator.faults.add({"fault": "lost_response", "count": 5, "route": "submit"})  # the client's 5 attempts
    store = StateStore()
    first = FluxFlexOperator(task_id="submit", prompt="rendered at 08:00:00")
    with pytest.raises(Exception, match="Server disconnected"):
        first.execute(context(TaskInstanceStub(try_number=1), store))
    assert store[JOB_STATE_KEY]["job_id"] is None, "the record was written before the call"
    second = FluxFlexOperator(task_id="submit", prompt="rendered at 08:01:00")  # the template rendered anew
    ti = TaskInstanceStub(try_number=2)
    job_id = second.execute(context(ti, store))
    assert ti.xcom["request"]["prompt"] == "rendered at 08:00:00"
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1
    assert accounting["submissions"] == 6
    assert store[JOB_STATE_KEY]["job_id"] == job_id


def test_hook_test_connection_against_the_emulator(
    emulator: EmulatorServer, apiframe_connection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = FluxHook().test_connection()
    assert ok, message
    assert emulator.url in message
    connection = json.loads(__import__("os").environ["AIRFLOW_CONN_APIFRAME_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_APIFRAME_DEFAULT", json.dumps({**connection, "password": "afk_wrong_key"}))
    ok, message = FluxHook().test_connection()
    assert not ok
    assert "401" in message
    assert "Check the API key in the Airflow connection" in message
    assert "afk_wrong_key" not in message
    assert emulator.accounting()["submissions"] == 0, "testing a connection never submits (never bills)"


async def test_hook_aget_job_reads_through_the_shared_client_and_lets_it_go(
    emulator: EmulatorServer, apiframe_connection: str
) -> None:
    job_id = submit(emulator)
    job = await FluxHook().aget_job(job_id)
    assert (job.id, job.status.value) == (job_id, "COMPLETED")
    assert shared_clients.users("apiframe_default") == 0, "a one-off call holds no client afterwards"
