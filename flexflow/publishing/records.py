"""What the publish tasks of a run stored, read back from their XComs by the review and finalize tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def stored_records(ti: Any, publish_task_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every file record the publish tasks returned, task by task: each (mapped) instance returned a list."""
    return [
        dict(record)
        for task_id in publish_task_ids
        for records in ti.xcom_pull(task_ids=[task_id]) or []
        if records
        for record in records
    ]


def published_jobs(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """The run's jobs, ``(image, variant)``, every one of whose images is stored (``index`` 1..``job_images``,
    each exactly once), with the id of the job that made them.

    Keyed by the run's job, not the API's: two jobs of a run may reuse one published picture. A record of a
    version before ``job_images`` counts for its job's one image.
    """
    indexes: dict[tuple[str, str], list[int]] = {}
    counts: dict[tuple[str, str], int] = {}
    job_ids: dict[tuple[str, str], str] = {}
    for record in records:
        job = (str(record["image"]), str(record.get("variant", "")))
        indexes.setdefault(job, []).append(int(record.get("index", 1)))
        counts[job] = int(record.get("job_images", 1))
        job_ids[job] = str(record["job_id"])
    return {job: job_ids[job] for job, seen in indexes.items() if sorted(seen) == list(range(1, counts[job] + 1))}
