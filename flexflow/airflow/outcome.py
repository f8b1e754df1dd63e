"""What waiting for a job produced: one typed outcome for the trigger, the sensor, the operator and publishing.

The trigger fires it as its event, the sensor and the operator return it as their XCom, and the
publishing task reads it back. Each of those is stored in Airflow's metadata database and may be read
by a newer flexflow than the one that wrote it (an upgrade while jobs wait in the triggerer).

Compatibility rule: stored shapes are only ever extended. A new field gets a default, no field is
renamed or removed, and :meth:`JobOutcome.from_stored` reads every shape any released version wrote:

- version 2 (this one): ``{"outcome_version": 2, "status", "job_id", "images", "error", ...}``;
- the 0.1 trigger event: ``{"status", "job_id", "job": {...job...} | None, "message"}``;
- the 0.1 sensor/operator XCom: the job itself, ``{"id", "status", "result_urls", ...}``.

The trigger's serialized arguments follow the same rule (see ``FluxJobTrigger``); both are held by
tests/test_airflow_outcome.py with the stored forms of 0.1 written out literally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flexflow.client.models import Job
from flexflow.contract.wire import JobStatus

OUTCOME_VERSION = 2
#: Statuses beyond the API's job statuses: the wait itself ended without a finished job.
TIMEOUT = "TIMEOUT"
ERROR = "ERROR"


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, or why waiting for it stopped (``TIMEOUT``, ``ERROR``)."""

    status: str
    job_id: str
    images: tuple[str, ...] = ()
    error: str | None = None
    credit_cost: int | None = None
    expired: bool = False

    @classmethod
    def of_job(cls, job: Job) -> JobOutcome:
        return cls(job.status.value, job.id, job.result_urls, job.error, job.credit_cost, job.expired)

    @classmethod
    def stopped(cls, status: str, job_id: str, why: str) -> JobOutcome:
        """The wait ended without a finished job: ``TIMEOUT`` or ``ERROR``, with the reason."""
        return cls(status, job_id, error=why)

    @property
    def completed(self) -> bool:
        return self.status == JobStatus.COMPLETED.value

    def to_stored(self) -> dict[str, Any]:
        """JSON-native, for the trigger event and XCom."""
        return {
            "outcome_version": OUTCOME_VERSION,
            "status": self.status,
            "job_id": self.job_id,
            "images": list(self.images),
            "error": self.error,
            "credit_cost": self.credit_cost,
            "expired": self.expired,
        }

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> JobOutcome:
        """An outcome from any shape a released version stored (see the module's compatibility rule)."""
        if "outcome_version" in stored:
            return cls._read(stored, stored["job_id"], stored.get("images"), stored)
        if "result_urls" in stored:  # 0.1's XCom: the job itself
            return cls._read(stored, stored["id"], stored["result_urls"], stored)
        job = stored.get("job")  # 0.1's trigger event
        if not job:
            return cls.stopped(str(stored["status"]), str(stored["job_id"]), stored.get("message") or "")
        return cls._read(stored, stored["job_id"], job.get("result_urls"), job)

    @classmethod
    def _read(cls, stored: Mapping[str, Any], job_id: object, images: Any, details: Mapping[str, Any]) -> JobOutcome:
        return cls(
            str(stored["status"]),
            str(job_id),
            tuple(images or ()),
            details.get("error"),
            details.get("credit_cost"),
            bool(details.get("expired", False)),
        )
