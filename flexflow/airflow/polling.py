"""What a finished job means for the task, and whether to wait in the triggerer by default."""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from flexflow.contract.wire import JobStatus

#: Event statuses beyond the API's job statuses.
TIMEOUT = "TIMEOUT"
ERROR = "ERROR"


def default_deferrable() -> bool:
    """True, unless the deployment sets ``[operators] default_deferrable`` itself.

    Airflow ships that option as False, so reading it alone would make every wait hold a worker
    slot; flexflow waits in the triggerer unless told otherwise (env var or a changed value).
    """
    explicit = (
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE" in os.environ
        or str(conf.get("operators", "default_deferrable", fallback="False")).lower()
        != str(conf.get_default_value("operators", "default_deferrable", fallback="False")).lower()
    )
    return conf.getboolean("operators", "default_deferrable", fallback=True) if explicit else True


def job_result(event: dict[str, Any]) -> dict[str, Any]:
    """The task's result for a finished-job event; raises what the task should fail with otherwise.

    A job the API FAILED or CANCELLED fails the task without retries: retrying the wait cannot
    change the job, and a new submission is a deliberate act (clear the submit task).
    """
    status = event.get("status")
    job = event.get("job") or {}
    job_id = event.get("job_id") or job.get("id")
    if status == JobStatus.COMPLETED:
        if not job.get("result_urls"):
            raise AirflowFailException(f"job {job_id} COMPLETED without result URLs")
        return job
    if status in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise AirflowFailException(
            f"Apiframe job {job_id} ended {status}: {job.get('error') or 'no error text'}. "
            "Not retried: clear the submit task to submit a new job deliberately."
        )
    if status == TIMEOUT:
        raise AirflowSensorTimeout(f"job {job_id} was not finished by the timeout: {event.get('message')}")
    raise AirflowException(f"waiting for job {job_id} failed: {event.get('message')}")
