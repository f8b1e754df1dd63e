"""How often to ask for a job's status.

The schedule starts at ``poll_interval`` and grows by half each time, capped while a job
is young (4.5 s; Apiframe quotes 10..60 s per generation; completion should be seen within seconds),
then at ``max_poll_interval`` once the job has run for a minute (a long job should not cost many
polls). The trigger and the operator's blocking wait both use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flexflow import defaults

DEFAULT_POLL_INTERVAL = defaults.POLL_INTERVAL.total_seconds()
DEFAULT_MAX_POLL_INTERVAL = defaults.MAX_POLL_INTERVAL.total_seconds()
YOUNG_JOB_SECONDS = 60.0
YOUNG_JOB_CAP = 4.5  # with the spread (<= 4.95 s), a request and some loop lag: seen within about 5 s
GROWTH = 1.5


#: Each job's intervals are stretched or shrunk by up to this fraction, fixed per job: jobs
#: submitted together would otherwise poll in lockstep, a thousand requests in one loop tick.
SPREAD = 0.1


@dataclass(frozen=True)
class PollSchedule:
    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    spread: float = 0.0  # this job's factor, in [-SPREAD, SPREAD]

    @classmethod
    def for_job(cls, job_id: str, poll_interval: float, max_poll_interval: float) -> PollSchedule:
        """The schedule of one job, with its own fixed spread (derived from its id: deterministic)."""
        unit = int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return cls(poll_interval, max_poll_interval, (2 * unit - 1) * SPREAD)

    def interval(self, polls_done: int, job_age: float) -> float:
        """Seconds to wait before the next poll, after ``polls_done`` polls of a job ``job_age`` s old."""
        cap = YOUNG_JOB_CAP if job_age < YOUNG_JOB_SECONDS else self.max_poll_interval
        return min(max(cap, self.poll_interval), self.poll_interval * GROWTH**polls_done) * (1 + self.spread)
