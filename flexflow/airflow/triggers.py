"""FluxJobTrigger: waits for a job in the triggerer, many jobs to one event loop and one HTTP client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexflow import defaults
from flexflow.airflow.hooks import FluxHook
from flexflow.airflow.outcome import ERROR, JobOutcome
from flexflow.airflow.polling import WaitTiming


class FluxJobTrigger(BaseTrigger):
    """Polls one job through the hook until it finishes, then fires one event: the job's outcome.

    Every argument is JSON-native, so a trigger re-created on another triggerer (after a restart)
    continues the same job: it only ever reads the job, never submits.

    Compatibility rule: the serialized arguments below are stored in Airflow's database while a job
    waits, so they are only ever added to (with a default here), never renamed or removed. flexflow
    0.1 stored exactly these six; a row it wrote is re-created and run by this version.
    """

    def __init__(
        self,
        job_id: str,
        conn_id: str,
        deadline: float,
        submitted_at: float | None = None,
        poll_interval: float = defaults.POLL_INTERVAL.total_seconds(),
        max_poll_interval: float = defaults.MAX_POLL_INTERVAL.total_seconds(),
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger.__init__ is untyped
        self.job_id = job_id
        self.conn_id = conn_id
        self.deadline = deadline
        self.submitted_at = submitted_at if submitted_at is not None else time.time()
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "conn_id": self.conn_id,
                "deadline": self.deadline,
                "submitted_at": self.submitted_at,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        timing = WaitTiming(self.deadline, self.submitted_at, self.poll_interval, self.max_poll_interval)
        try:
            outcome = await FluxHook(self.conn_id).await_job(self.job_id, timing)
        except (AirflowNotFoundException, ValueError) as exc:  # the connection is missing or has no key
            outcome = JobOutcome.stopped(ERROR, self.job_id, f"cannot use connection '{self.conn_id}': {exc}")
        yield TriggerEvent(outcome.to_stored())  # type: ignore[no-untyped-call]  # untyped in Airflow
