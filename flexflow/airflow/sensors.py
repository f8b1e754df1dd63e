"""FluxJobSensor: waits for a submitted job, in the triggerer when deferrable."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.configuration import conf

from flexflow import defaults
from flexflow.airflow.keys import JOB_LINK_XCOM_KEY
from flexflow.airflow.links import ApiframeJobLink
from flexflow.airflow.outcome import JobOutcome
from flexflow.airflow.waiting import JobWaiting

if TYPE_CHECKING:
    from airflow.sdk import Context


class FluxJobSensor(JobWaiting, BaseSensorOperator):
    """Wait for an Apiframe job; return its outcome (result URLs, credit cost) for downstream tasks.

    :param job_id: the job to wait for (templated; e.g. the submit task's XCom)
    :param apiframe_conn_id: the ``apiframe`` connection
    :param deferrable: wait in the triggerer, holding no worker slot (default: Airflow's
        ``[operators] default_deferrable``); otherwise poke or reschedule as ``mode`` says, with the
        same outcome
    :param poll_interval: first interval between status checks, in seconds (grows on long jobs)

    A job the API FAILED or CANCELLED fails the task without retries, with the API's error text.
    """

    template_fields: Sequence[str] = ("job_id",)
    operator_extra_links = (ApiframeJobLink(),)
    ui_color = "#e5f0ff"

    def __init__(
        self,
        *,
        job_id: str,
        apiframe_conn_id: str = defaults.CONNECTION_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = defaults.POLL_INTERVAL.total_seconds(),
        max_poll_interval: float = defaults.MAX_POLL_INTERVAL.total_seconds(),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", defaults.JOB_TIMEOUT.total_seconds())
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.job_id = job_id
        self.wait_with(apiframe_conn_id, deferrable, poll_interval, max_poll_interval)

    def wait_timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout)

    def execute(self, context: Context) -> Any:
        try:
            context["ti"].xcom_push(key=JOB_LINK_XCOM_KEY, value=self.hook.job_link(self.job_id))
            if self.deferrable:
                return self.wait_or_defer(self.job_id)
            return super().execute(context)  # poke or reschedule
        finally:
            self.hook.close()

    def poke(self, context: Context) -> PokeReturnValue:
        job = self.hook.get_job(self.job_id)
        self.log.info(
            "job %s is %s (progress %s%%, x-request-id %s)", job.id, job.status.value, job.progress, job.request_id
        )
        if not job.is_terminal:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self.finish(JobOutcome.of_job(job)))
