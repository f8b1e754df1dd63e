"""FluxFlexOperator: submits one Flux 2 Flex job, exactly once per logical request."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from flexflow import defaults
from flexflow.airflow.keys import JOB_LINK_XCOM_KEY, JOB_STATE_KEY, REQUEST_XCOM_KEY
from flexflow.airflow.links import ApiframeJobLink
from flexflow.airflow.outcome import JobOutcome
from flexflow.airflow.waiting import JobWaiting
from flexflow.client.requests import generation_request, request_digest
from flexflow.contract.schema import validate_request
from flexflow.contract.wire import JobStatus

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import RuntimeTaskInstanceProtocol

#: The statuses of a job that has ended; a timeout or an error while waiting is not one of them.
ENDED = frozenset(status.value for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED))
STATE_RETENTION = timedelta(days=7)  # longer than the API's 24 h idempotency window


def idempotency_key(
    dag_id: str, run_id: str, task_id: str, map_index: int, body: Mapping[str, Any], generation: int
) -> str:
    """The same logical request always gets the same key; a deliberate resubmission bumps ``generation``."""
    material = json.dumps([dag_id, run_id, task_id, map_index, generation, body], sort_keys=True, separators=(",", ":"))
    return "flexflow-" + hashlib.sha256(material.encode()).hexdigest()[:48]


@dataclass(frozen=True)
class JobRecord:
    """What a try rendered and sent, kept in ``task_state_store`` across tries.

    It is written before the request leaves, so a try that never learned its job id (a lost response,
    a crashed worker) is followed by one that sends the very same body with the very same key: the
    API answers with the first job, and a template that renders differently on each try (a clock, a
    random value) cannot cause a second bill.
    """

    request: dict[str, Any]
    idempotency_key: str
    generation: int
    job_id: str | None = None
    submitted_at: float | None = None

    @classmethod
    def read(cls, stored: object) -> JobRecord | None:
        """The stored record; 0.1 kept no request (``None``: render it again, as 0.1 did)."""
        if not isinstance(stored, Mapping) or "request" not in stored:
            return None
        # What this version writes before the call has no job yet: the optional fields may be absent.
        return cls(
            stored["request"],
            stored["idempotency_key"],
            stored["generation"],
            stored.get("job_id"),
            stored.get("submitted_at"),
        )


class FluxFlexOperator(JobWaiting, BaseOperator):
    """Submit a Flux 2 Flex generation job; returns the job id (or, when waiting, the job's outcome).

    :param prompt: what to generate (templated)
    :param flux: ``fluxParams``; every documented default is applied (templated)
    :param flux_overrides: values laid over ``flux``, for mapping over variants (templated)
    :param webhook_url: https URL the API notifies when the job finishes
    :param webhook_events: the events sent to ``webhook_url`` (``progress``, ``completed``, ``failed``);
        None for the API's default (completed and failed)
    :param apiframe_conn_id: the ``apiframe`` connection (base URL and API key)
    :param wait_for_completion: also wait for the job in this task (for hand-written DAGs)
    :param return_job_id: with ``wait_for_completion``, return the job id once the job has ended,
        however it ended, and leave its outcome to a downstream ``FluxJobSensor`` (which then finds it
        ended and returns at once). Compiled specs use it so that their submit task holds its pool slot
        for as long as its job is in flight (see "Jobs in flight and Airflow pools" in docs/spec.md)
    :param deferrable: wait in the triggerer rather than holding a worker slot (default: Airflow's
        ``[operators] default_deferrable``, as for every provider's operators)
    :param poll_interval: first interval between status checks while waiting, in seconds
    :param job_timeout: longest wait for the job
    :param reusable_requests: digests (:func:`~flexflow.client.requests.request_digest`) of requests whose
        pictures are already published (templated, e.g. an upstream task's XCom): such a request is not
        submitted and the task is skipped, its ``request`` XCom saying what it would have sent

    A retried or restarted try never creates a second billed job: the request is rendered once and
    kept with its Idempotency-Key in ``task_state_store`` (see :class:`JobRecord`), and a later try
    reconnects to the job. Only when that job FAILED, was CANCELLED, or completed with results that are
    gone or unusable does a later try (a deliberate clear) render and submit anew, saying what it costs.
    """

    template_fields: Sequence[str] = ("prompt", "flux", "flux_overrides", "webhook_url", "reusable_requests")
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
        webhook_events: Sequence[str] | None = None,
        apiframe_conn_id: str = defaults.CONNECTION_ID,
        wait_for_completion: bool = False,
        return_job_id: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = defaults.POLL_INTERVAL.total_seconds(),
        max_poll_interval: float = defaults.MAX_POLL_INTERVAL.total_seconds(),
        job_timeout: timedelta = defaults.JOB_TIMEOUT,
        reusable_requests: Collection[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.flux = flux or {}
        self.flux_overrides = flux_overrides or {}
        self.webhook_url = webhook_url
        self.webhook_events = list(webhook_events) if webhook_events else None
        self.wait_for_completion = wait_for_completion
        self.return_job_id = return_job_id
        self.job_timeout = job_timeout
        self.reusable_requests = reusable_requests
        self.wait_with(apiframe_conn_id, deferrable, poll_interval, max_poll_interval)

    def wait_timeout(self) -> timedelta:
        return self.job_timeout

    def ended(self, outcome: JobOutcome) -> Any:
        """The outcome (:meth:`finish`), or with ``return_job_id`` the id of a job that has ended in any way."""
        if self.return_job_id and outcome.status in ENDED:
            self.log.info(
                "job %s has ended (%s): its outcome is the wait task's to report", outcome.job_id, outcome.status
            )
            return outcome.job_id
        return self.finish(outcome)

    def build_request(self) -> dict[str, Any]:
        """The request body after templating; fails the task (no retries, no call) when the API would reject it."""
        flux = {**self.flux, **self.flux_overrides}
        body = generation_request(self.prompt, flux, self.webhook_url, self.webhook_events)
        problems = validate_request(body)
        if problems:
            listed = "; ".join(f"{p.dotted_path}: {p.message}" for p in problems)
            raise AirflowFailException(f"the generation request is invalid, nothing was sent: {listed}")
        return body

    def execute(self, context: Context) -> Any:
        body = self.build_request()  # once: the reuse check and the submission read the same body
        self._skip_when_published(context, body)
        try:
            record = self._submit_or_reconnect(context, body)
            assert record.job_id is not None
            ti = context["ti"]
            ti.xcom_push(key=REQUEST_XCOM_KEY, value=record.request)
            ti.xcom_push(key=JOB_LINK_XCOM_KEY, value=self.hook.job_link(record.job_id))
            if not self.wait_for_completion:
                return record.job_id
            return self.wait_or_defer(record.job_id, record.submitted_at)
        finally:
            self.hook.close()

    def _skip_when_published(self, context: Context, body: dict[str, Any]) -> None:
        """A request whose picture is already published costs nothing: it is not sent, the task is skipped."""
        if not self.reusable_requests:
            return
        digest = request_digest(body)
        if digest in self.reusable_requests:
            context["ti"].xcom_push(key=REQUEST_XCOM_KEY, value=body)
            raise AirflowSkipException(
                f"not submitted: this picture (request sha256 {digest[:16]}...) is already published, and "
                "the publish task copies it (set `reuse: false` in the spec to generate it again)"
            )

    def _submit_or_reconnect(self, context: Context, body: dict[str, Any]) -> JobRecord:
        store = context.get("task_state_store")
        record = JobRecord.read(store.get(JOB_STATE_KEY)) if store is not None else None
        if record is None:
            record = self._new_record(context["ti"], body, generation=0)
        elif record.job_id is not None:
            reuse = self.hook.reuse(record.job_id, record.request)
            if reuse.reusable:
                self.log.info("reconnecting to job %s submitted by an earlier try (%s)", record.job_id, reuse.why)
                return record
            self.log.warning("job %s from an earlier try %s", record.job_id, reuse.why)
            record = self._new_record(context["ti"], body, generation=record.generation + 1)
        else:
            self.log.info("an earlier try sent this request without learning its job: sending the same body again")
        if store is not None:  # before the call: whatever happens to it, the next try sends the same
            store.set(JOB_STATE_KEY, asdict(record), retention=STATE_RETENTION)
        job_id = self.hook.submit(record.request, record.idempotency_key)
        record = replace(record, job_id=job_id, submitted_at=time.time())
        self.log.info(
            "submitted job %s (Idempotency-Key %s, generation %d)", job_id, record.idempotency_key, record.generation
        )
        if store is not None:
            store.set(JOB_STATE_KEY, asdict(record), retention=STATE_RETENTION)
        return record

    def _new_record(self, ti: RuntimeTaskInstanceProtocol, body: dict[str, Any], generation: int) -> JobRecord:
        map_index = ti.map_index if ti.map_index is not None else -1
        key = idempotency_key(ti.dag_id, ti.run_id, ti.task_id, map_index, body, generation)
        return JobRecord(body, key, generation)
