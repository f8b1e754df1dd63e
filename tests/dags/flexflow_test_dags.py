"""DAGs the Airflow tests run with dag.test(); they live in a DAG bundle of their own (tests/dags)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from flexflow.airflow.operators import FluxFlexOperator
from flexflow.airflow.sensors import FluxJobSensor

START = datetime(2026, 11, 1)
FAST = 0.05  # seconds between polls: the emulator's jobs finish at once in tests
FLUX = {"resolution": "0.5MP", "output_format": "png", "seed": 11}


class CrashAfterSubmit(FluxFlexOperator):
    """Dies after its first try submitted, like a worker lost mid-task."""

    def execute(self, context: Any) -> Any:
        result = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated worker crash after the submit reached the API")
        return result


DAGS: dict[str, DAG] = {}


def _dag(dag_id: str) -> DAG:
    dag = DAGS[dag_id] = DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["flexflow-test"])
    return dag


with _dag("test_crash_after_submit"):
    crash = CrashAfterSubmit(task_id="submit", prompt="crash test", flux=FLUX, retries=2, retry_delay=timedelta(0))
    FluxJobSensor(task_id="wait", job_id=crash.output, poll_interval=FAST, deferrable=True)

for mode in ("poke", "reschedule"):
    with _dag(f"test_sensor_{mode}"):
        submitted = FluxFlexOperator(task_id="submit", prompt=f"{mode} sensor", flux=FLUX)
        FluxJobSensor(task_id="wait", job_id=submitted.output, deferrable=False, mode=mode, poke_interval=FAST)

for deferrable in (True, False):
    with _dag(f"test_submit_and_wait_{'deferred' if deferrable else 'blocking'}"):
        FluxFlexOperator(
            task_id="submit_and_wait",
            prompt="one task submits and waits",
            flux=FLUX,
            wait_for_completion=True,
            deferrable=deferrable,
            poll_interval=FAST,
        )

with _dag("test_failed_job"):
    doomed = FluxFlexOperator(task_id="submit", prompt="will fail", flux=FLUX, retries=2, retry_delay=timedelta(0))
    FluxJobSensor(
        task_id="wait", job_id=doomed.output, poll_interval=FAST, deferrable=True, retries=2, retry_delay=timedelta(0)
    )

with _dag("test_invalid_request"):
    FluxFlexOperator(task_id="submit", prompt="bad", flux={"guidance": 3.33}, retries=2, retry_delay=timedelta(0))

with _dag("test_clock_prompt"):
    # The prompt renders differently on every try (a fresh UUID): only the body kept from the first
    # render, with its Idempotency-Key, keeps a retry from paying for a second job.
    clocked = FluxFlexOperator.partial(
        task_id="submit",
        prompt="poster, render {{ macros.uuid.uuid4() }}",
        flux=FLUX,
        retries=4,
        retry_delay=timedelta(0),
    ).expand(flux_overrides=[{"seed": 1}, {"seed": 2}, {"seed": 3}])
    FluxJobSensor.partial(task_id="wait", poll_interval=FAST, deferrable=True).expand(job_id=clocked.output)
