"""The one wait-or-defer path of ``FluxJobSensor`` and ``FluxFlexOperator(wait_for_completion=True)``."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from flexflow.airflow.hooks import FluxHook
from flexflow.airflow.outcome import TIMEOUT, JobOutcome
from flexflow.airflow.polling import WaitTiming
from flexflow.airflow.triggers import FluxJobTrigger
from flexflow.contract.wire import JobStatus

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import Logger
    from airflow.triggers.base import BaseTrigger

#: The task's own timeout outlasts the trigger's deadline, so the trigger reports the timeout first.
TRIGGER_TIMEOUT_MARGIN = timedelta(minutes=1)


class JobWaiting:
    """Mixed into an operator that waits for a job; the operator sets the four attributes below."""

    apiframe_conn_id: str
    deferrable: bool
    poll_interval: float
    max_poll_interval: float

    if TYPE_CHECKING:  # provided by BaseOperator, which every user of the mixin also derives from

        @property
        def log(self) -> Logger: ...

        def defer(
            self,
            *,
            trigger: BaseTrigger,
            method_name: str,
            kwargs: dict[str, Any] | None = None,
            timeout: timedelta | int | float | None = None,
        ) -> NoReturn: ...

    def wait_with(
        self, apiframe_conn_id: str, deferrable: bool, poll_interval: float, max_poll_interval: float
    ) -> None:
        """Set the four attributes (from the operator's ``__init__``)."""
        self.apiframe_conn_id = apiframe_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval

    def wait_timeout(self) -> timedelta:
        """Longest wait for the job."""
        raise NotImplementedError

    @cached_property
    def hook(self) -> FluxHook:
        return FluxHook(self.apiframe_conn_id)

    def wait_or_defer(self, job_id: str, submitted_at: float | None = None) -> Any:
        """The finished job, waited for in the triggerer (deferrable) or in this task.

        A job that has already ended (a reconnecting try, an instant job) needs no trigger: deferring
        it anyway costs a triggerer round trip and races Airflow's handling of an immediate event.
        """
        job = self.hook.get_job(job_id)
        if job.is_terminal:
            self.log.info("job %s has already ended (%s): nothing to wait for", job_id, job.status.value)
            return self.ended(JobOutcome.of_job(job))
        now = time.time()
        timing = WaitTiming(
            deadline=now + self.wait_timeout().total_seconds(),
            submitted_at=submitted_at or now,
            poll_interval=self.poll_interval,
            max_poll_interval=self.max_poll_interval,
        )
        if self.deferrable:
            self.hook.close()
            self.defer(
                trigger=FluxJobTrigger(job_id, self.apiframe_conn_id, *_trigger_timing(timing)),
                method_name="execute_complete",
                timeout=self.wait_timeout() + TRIGGER_TIMEOUT_MARGIN,
            )
        return self.ended(self.hook.wait_for_job(job_id, timing))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        return self.ended(JobOutcome.from_stored(event))

    def ended(self, outcome: JobOutcome) -> Any:
        """The task's result once the wait is over: :meth:`finish` unless the operator says otherwise."""
        return self.finish(outcome)

    def finish(self, outcome: JobOutcome) -> dict[str, Any]:
        """The task's result for a finished job; raises what the task should fail with otherwise.

        A job the API FAILED or CANCELLED fails the task without retries: retrying the wait cannot
        change the job, and a new submission is a deliberate act (clear the submit task).
        """
        if outcome.completed:
            if not outcome.images:
                raise AirflowFailException(f"job {outcome.job_id} COMPLETED without result URLs")
            self.log.info("job %s COMPLETED: %s", outcome.job_id, ", ".join(outcome.images))
            return outcome.to_stored()
        if outcome.status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            raise AirflowFailException(
                f"Apiframe job {outcome.job_id} ended {outcome.status}: {outcome.error or 'no error text'}. "
                "Not retried: clear the submit task to submit a new job deliberately."
            )
        if outcome.status == TIMEOUT:
            raise AirflowSensorTimeout(f"job {outcome.job_id} was not finished by the timeout: {outcome.error}")
        raise AirflowException(f"waiting for job {outcome.job_id} failed: {outcome.error}")


def _trigger_timing(timing: WaitTiming) -> tuple[float, float, float, float]:
    return timing.deadline, timing.submitted_at, timing.poll_interval, timing.max_poll_interval
