"""FluxFlexOperator: submits one Flux 2 Flex job, exactly once per logical request."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from flexflow.airflow.hooks import DEFAULT_CONN_ID, FluxHook
from flexflow.airflow.links import JOB_LINK_XCOM_KEY, ApiframeJobLink
from flexflow.airflow.polling import default_deferrable, job_result
from flexflow.airflow.triggers import FluxJobTrigger
from flexflow.client import FluxClient, JobNotFound
from flexflow.client.polling import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL, PollSchedule
from flexflow.client.requests import generation_request
from flexflow.contract.schema import validate_request
from flexflow.contract.wire import JobStatus

if TYPE_CHECKING:
    from airflow.sdk import Context

#: task_state_store key of the job a try submitted; a retry reconnects to it.
JOB_STATE_KEY = "flexflow_job"
REQUEST_XCOM_KEY = "request"
DEFAULT_JOB_TIMEOUT = timedelta(minutes=20)
STATE_RETENTION = timedelta(days=7)  # longer than the API's 24 h idempotency window


def idempotency_key(
    dag_id: str, run_id: str, task_id: str, map_index: int, body: Mapping[str, Any], generation: int
) -> str:
    """The same logical request always gets the same key; a deliberate resubmission bumps ``generation``."""
    material = json.dumps([dag_id, run_id, task_id, map_index, generation, body], sort_keys=True, separators=(",", ":"))
    return "flexflow-" + hashlib.sha256(material.encode()).hexdigest()[:48]


class FluxFlexOperator(BaseOperator):
    """Submit a Flux 2 Flex generation job; returns the job id (or, when waiting, the finished job).

    :param prompt: what to generate (templated)
    :param flux: ``fluxParams``; every documented default is applied (templated)
    :param flux_overrides: values laid over ``flux``, for mapping over variants (``.expand(flux_overrides=[...])``)
    :param webhook_url: https URL the API notifies when the job finishes
    :param apiframe_conn_id: the ``apiframe`` connection (base URL and API key)
    :param wait_for_completion: also wait for the job in this task (for hand-written DAGs)
    :param deferrable: wait in the triggerer rather than holding a worker slot
    :param poll_interval: first interval between status checks while waiting, in seconds
    :param job_timeout: longest wait for the job

    A retried or restarted try never creates a second billed job: the Idempotency-Key is derived
    from dag_id, run_id, task_id, map_index and the request body, and the job id is kept in
    ``task_state_store`` so a later try reconnects to it. Only when that job FAILED, was
    CANCELLED or its results expired does a later try (a deliberate clear) submit anew.
    """

    template_fields: Sequence[str] = ("prompt", "flux", "flux_overrides", "webhook_url")
    template_fields_renderers: ClassVar[dict[str, str]] = {"flux": "json", "flux_overrides": "json"}
    operator_extra_links = (ApiframeJobLink(),)
    ui_color = "#f3e5ff"

    def __init__(
        self,
        *,
        prompt: str,
        flux: Mapping[str, Any] | None = None,
        flux_overrides: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        apiframe_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        deferrable: bool | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        job_timeout: timedelta = DEFAULT_JOB_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.flux = dict(flux or {})
        self.flux_overrides = dict(flux_overrides or {})
        self.webhook_url = webhook_url
        self.apiframe_conn_id = apiframe_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.job_timeout = job_timeout

    def build_request(self) -> dict[str, Any]:
        """The request body after templating; fails the task (no retries, no call) when the API would reject it."""
        body = generation_request(self.prompt, {**self.flux, **self.flux_overrides}, self.webhook_url)
        problems = validate_request(body)
        if problems:
            listed = "; ".join(f"{p.dotted_path}: {p.message}" for p in problems)
            raise AirflowFailException(f"the generation request is invalid, nothing was sent: {listed}")
        return body

    def execute(self, context: Context) -> Any:
        body = self.build_request()
        hook = FluxHook(self.apiframe_conn_id)
        settings = hook.settings()
        with hook.client(settings) as client:
            job_id = self._submit_or_reconnect(context, client, body)
            ti = context["ti"]
            ti.xcom_push(key=REQUEST_XCOM_KEY, value=body)
            ti.xcom_push(key=JOB_LINK_XCOM_KEY, value=settings.link_for(job_id))
            if not self.wait_for_completion:
                return job_id
            if not self.deferrable:
                return self._wait_blocking(client, job_id)
        deadline = time.time() + self.job_timeout.total_seconds()
        self.defer(
            trigger=FluxJobTrigger(
                job_id, self.apiframe_conn_id, deadline, time.time(), self.poll_interval, self.max_poll_interval
            ),
            method_name="execute_complete",
            timeout=self.job_timeout + timedelta(minutes=1),  # the trigger fires its own timeout first
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return job_result(event)

    def _submit_or_reconnect(self, context: Context, client: FluxClient, body: dict[str, Any]) -> str:
        store = context.get("task_state_store")
        previous = store.get(JOB_STATE_KEY) if store is not None else None
        generation = 0
        if isinstance(previous, dict):
            job_id = previous["job_id"]
            reusable, why = self._reusable(client, job_id)
            if reusable:
                self.log.info("reconnecting to job %s submitted by an earlier try (%s)", job_id, why)
                return job_id
            generation = int(previous.get("generation", 0)) + 1
            self.log.warning("job %s from an earlier try %s: submitting a new job deliberately", job_id, why)
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        key = idempotency_key(ti.dag_id, ti.run_id, ti.task_id, map_index, body, generation)
        job_id = client.submit(body, key)
        self.log.info("submitted job %s (Idempotency-Key %s, generation %d)", job_id, key, generation)
        if store is not None:
            record = {"job_id": job_id, "generation": generation, "idempotency_key": key}
            store.set(JOB_STATE_KEY, record, retention=STATE_RETENTION)
        return job_id

    @staticmethod
    def _reusable(client: FluxClient, job_id: str) -> tuple[bool, str]:
        try:
            job = client.get_job(job_id)
        except JobNotFound:
            return False, "is unknown to the API"
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return False, f"ended {job.status.value}: {job.error}"
        if job.status is JobStatus.COMPLETED and job.expired:
            return False, "completed, but its results expired"
        return True, f"status {job.status.value}"

    def _wait_blocking(self, client: FluxClient, job_id: str) -> dict[str, Any]:
        schedule = PollSchedule(self.poll_interval, self.max_poll_interval)
        started = time.monotonic()
        deadline = started + self.job_timeout.total_seconds()
        polls = 0
        while True:
            time.sleep(max(0.0, min(schedule.interval(polls, time.monotonic() - started), deadline - time.monotonic())))
            polls += 1
            job = client.get_job(job_id)
            self.log.info("job %s is %s (progress %s%%)", job_id, job.status.value, job.progress)
            if job.is_terminal or time.monotonic() >= deadline:
                status = job.status.value if job.is_terminal else "TIMEOUT"
                return job_result({"status": status, "job": job.to_dict(), "job_id": job_id, "message": "timed out"})
