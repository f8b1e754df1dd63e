"""A hand-written DAG using flexflow's Airflow parts directly: submit -> deferrable wait -> report.

Needs an ``apiframe`` connection named ``apiframe_default`` (base URL and API key).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

from flexflow.airflow.operators import FluxFlexOperator
from flexflow.airflow.outcome import JobOutcome
from flexflow.airflow.sensors import FluxJobSensor

log = logging.getLogger(__name__)

with DAG(
    dag_id="flexflow_example_hand_written",
    description="Submit one Flux 2 Flex job, wait for it in the triggerer, report the result",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    tags=["flexflow", "example"],
    params={"subject": "a lighthouse at dawn"},
) as dag:
    submit = FluxFlexOperator(
        task_id="submit",
        prompt="Poster of {{ params.subject }}, watercolor, run {{ run_id }}",
        flux={"resolution": "0.5MP", "aspect_ratio": "3:4", "output_format": "png", "seed": 7},
        retries=2,
    )
    wait = FluxJobSensor(task_id="wait", job_id=submit.output, deferrable=True)

    @task
    def report(stored: dict[str, Any]) -> str:
        outcome = JobOutcome.from_stored(stored)
        log.info("job %s cost %s credits: %s", outcome.job_id, outcome.credit_cost, outcome.images[0])
        return outcome.images[0]

    report(wait.output)
