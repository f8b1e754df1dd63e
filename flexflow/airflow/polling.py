"""How waiting for a job proceeds, written once for the blocking hook and the triggerer's event loop.

:func:`wait_flow` is a generator that does no I/O: it yields what to do next (poll the job, re-read
the connection, pause) and is sent what a poll returned (the job, or the API error). The hook drives
it with ``time.sleep`` and the blocking client (``FluxHook.wait_for_job``), and with ``asyncio.sleep``
and the shared async client (``FluxHook.await_job``, which the trigger calls), so both ways of
waiting decide the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from flexflow.airflow.outcome import ERROR, TIMEOUT, JobOutcome
from flexflow.client import ApiError, AuthenticationFailed, Job
from flexflow.client.polling import PollSchedule

if TYPE_CHECKING:
    from airflow.sdk.types import Logger

POLL: Literal["poll"] = "poll"
#: Read the connection again (its key may have been rotated), then poll.
RECONNECT: Literal["reconnect"] = "reconnect"


@dataclass(frozen=True)
class Pause:
    seconds: float


WaitStep = Literal["poll", "reconnect"] | Pause
#: What the driver sends back: the polled job, the error the poll raised, or None after any other step.
PollAnswer = Job | ApiError | None
WaitFlow = Generator[WaitStep, PollAnswer, JobOutcome]


@dataclass(frozen=True)
class WaitTiming:
    """When to give up and how often to ask; times are epoch seconds, so they survive a triggerer restart."""

    deadline: float
    submitted_at: float
    poll_interval: float
    max_poll_interval: float


def wait_flow(job_id: str, timing: WaitTiming, log: Logger, clock: Callable[[], float] = time.time) -> WaitFlow:
    """Poll until the job ends, the deadline passes or the API refuses for good; returns the outcome.

    The first poll is immediate: a restarted trigger may find its job long done. Errors the client
    already retried (rate limits, outages) do not end the wait before the deadline; a 401 re-reads
    the connection once; any other API error ends it with ``ERROR``.
    """
    schedule = PollSchedule.for_job(job_id, timing.poll_interval, timing.max_poll_interval)
    polls, status, reconnected = 0, None, False
    while True:
        polls += 1
        answer = yield POLL
        if isinstance(answer, Job):
            if answer.status != status:
                status = answer.status
                log.info(
                    "job %s is %s (progress %s%%, x-request-id %s)",
                    job_id,
                    status.value,
                    answer.progress,
                    answer.request_id,
                )
            if answer.is_terminal:
                return JobOutcome.of_job(answer)
        elif isinstance(answer, AuthenticationFailed) and not reconnected:
            reconnected = True
            yield RECONNECT
        elif isinstance(answer, ApiError) and answer.retryable:
            log.warning("job %s: polling failed (%s); will try again", job_id, answer.summary)
        elif isinstance(answer, ApiError):
            return JobOutcome.stopped(ERROR, job_id, str(answer))
        remaining = timing.deadline - clock()
        if remaining <= 0:
            last = status.value if status else "unknown"
            return JobOutcome.stopped(TIMEOUT, job_id, f"no result after {polls} polls; last status {last}")
        yield Pause(min(schedule.interval(polls - 1, clock() - timing.submitted_at), remaining))
