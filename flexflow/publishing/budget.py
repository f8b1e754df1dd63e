"""The run-time budget check of the prepare task: refuse a run over budget before anything is submitted.

The prepare task carries the spec's caps and one run's estimate (fixed at validation: no trigger-form
param can change the job count or a resolution, see :mod:`flexflow.spec.budget`). Per-run caps compare
that estimate; per-day caps add what this DAG's other runs of the same UTC day estimated, read from
the ``budget`` XCom their prepare task pushed when it let them go ahead. A refused run pushes nothing,
so it does not count against the day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from flexflow.spec.budget import NOTHING, Estimate, over

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The XCom key (of the prepare task) holding a run's ``{"day", "run_id", "estimate"}``.
BUDGET_XCOM_KEY = "budget"


def enforce_budget(budget: Mapping[str, Any], context: Context, cost: Estimate | None = None) -> Estimate:
    """Fail the run (no retries) when it would exceed a cap; else record its estimate for the day's later runs.

    :param budget: ``{"caps": {cap: text}, "estimate": Estimate.to_dict(), "price_per_megapixel": text}``
    :param cost: what this run will submit, when less than the whole estimate (images it reuses cost nothing)
    :returns: the day's estimate so far, this run included
    """
    ti = context["ti"]
    caps: Mapping[str, str] = budget["caps"]
    cost = Estimate.from_dict(budget["estimate"]) if cost is None else cost
    day = run_day(context)
    earlier = NOTHING
    if any(key.endswith("_per_day") for key in caps):
        earlier = day_total(
            ti.xcom_pull(task_ids=[ti.task_id], key=BUDGET_XCOM_KEY, include_prior_dates=True), day, ti.run_id
        )
    refusals = [message for _, message in over(caps, "run", cost)]
    refusals += [
        f"{m} for {day} (UTC), with this DAG's earlier runs that day" for _, m in over(caps, "day", earlier + cost)
    ]
    if refusals:
        raise AirflowFailException(
            f"nothing was submitted: spec {ti.dag_id!r} is over budget: {'; '.join(refusals)}"
            f" (this run: {cost.jobs} job(s), {cost.credits} credits, ${cost.usd:.2f}"
            f" at ${budget['price_per_megapixel']} per megapixel; earlier runs of {day}: {earlier.credits} credits,"
            f" ${earlier.usd:.2f}). Raise the cap in the spec's budget, or trigger the run another day"
        )
    ti.xcom_push(BUDGET_XCOM_KEY, {"day": day, "run_id": ti.run_id, "estimate": cost.to_dict()})
    return earlier + cost


def run_day(context: Context) -> str:
    """The run's UTC day: its logical date, or when it was due to run (a manual run may have no logical date)."""
    dag_run = context["dag_run"]
    when: datetime = dag_run.logical_date or dag_run.run_after
    return when.astimezone(UTC).date().isoformat()


def day_total(records: Iterable[Any] | None, day: str, own_run_id: str) -> Estimate:
    """What the other runs of ``day`` estimated, from their ``budget`` XComs (anything else is skipped)."""
    total = NOTHING
    seen: set[str] = set()
    for record in records or ():
        if not isinstance(record, Mapping) or record.get("day") != day:
            continue
        run_id = str(record.get("run_id"))
        if run_id == own_run_id or run_id in seen:
            continue
        seen.add(run_id)
        total = total + Estimate.from_dict(record["estimate"])
    return total
