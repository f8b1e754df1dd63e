"""FluxJobSensor: waits for a submitted job, in the triggerer by default."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from flexflow.airflow.hooks import DEFAULT_CONN_ID, FluxHook
from flexflow.airflow.links import JOB_LINK_XCOM_KEY, ApiframeJobLink
from flexflow.airflow.operators import DEFAULT_JOB_TIMEOUT
from flexflow.airflow.polling import default_deferrable, job_result
from flexflow.airflow.triggers import FluxJobTrigger
from flexflow.client import FluxClient
from flexflow.client.polling import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL

if TYPE_CHECKING:
    from airflow.sdk import Context


class FluxJobSensor(BaseSensorOperator):
    """Wait for an Apiframe job; return the finished job (result URLs, metadata) for downstream tasks.

    :param job_id: the job to wait for (templated; e.g. the submit task's XCom)
    :param apiframe_conn_id: the ``apiframe`` connection
    :param deferrable: wait in the triggerer, holding no worker slot (default True, or the
        deployment's explicit ``[operators] default_deferrable``); otherwise poke or reschedule
        as ``mode`` says, with the same outcome
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
        apiframe_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", DEFAULT_JOB_TIMEOUT.total_seconds())
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.job_id = job_id
        self.apiframe_conn_id = apiframe_conn_id
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval

    def execute(self, context: Context) -> Any:
        settings = FluxHook(self.apiframe_conn_id).settings()
        context["ti"].xcom_push(key=JOB_LINK_XCOM_KEY, value=settings.link_for(self.job_id))
        if not self.deferrable:
            try:
                return super().execute(context)
            finally:
                if "_client" in vars(self):
                    self._client.close()
        # A job that has already ended needs no trigger: deferring it anyway races Airflow's
        # handling of a trigger that fires at once (a spurious failed try with the LocalExecutor).
        with FluxHook.client(settings) as client:
            job = client.get_job(self.job_id)
        if job.is_terminal:
            return self.execute_complete(context, {"status": job.status.value, "job": job.to_dict()})
        self.defer(
            trigger=FluxJobTrigger(
                self.job_id,
                self.apiframe_conn_id,
                deadline=time.time() + self.timeout,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + 60),  # the trigger fires its own timeout first
        )

    @cached_property
    def _client(self) -> FluxClient:
        """One client for all pokes of a try (a client's TLS setup is not free)."""
        return FluxHook(self.apiframe_conn_id).get_conn()

    def poke(self, context: Context) -> PokeReturnValue:
        job = self._client.get_job(self.job_id)
        self.log.info(
            "job %s is %s (progress %s%%, x-request-id %s)", job.id, job.status.value, job.progress, job.request_id
        )
        if not job.is_terminal:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=job_result({"status": job.status.value, "job": job.to_dict()}))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        job = job_result(event)
        self.log.info("job %s COMPLETED: %s", job["id"], ", ".join(job["result_urls"]))
        return job
