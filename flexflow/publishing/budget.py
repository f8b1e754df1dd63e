"""The run-time budget check of the prepare task: refuse a run over budget before anything is submitted.

The prepare task carries the spec's caps and one run's estimate (fixed at validation: no trigger-form
param can change the job count or a resolution, see :mod:`flexflow.spec.budget`). Per-run caps compare
what the run will submit; per-day caps add what this DAG's other runs of the same UTC day reserved.

A run that goes ahead reserves its estimate in a file of its own,
``<publish root>/.flexflow-ledger/<dag_id>/days/<day>/<run_id>.json``, and the check sums every other
reservation of the day, whatever order the runs started in. Prepare tasks of a DAG with a per-day cap
run one at a time (``max_active_tis_per_dag=1``), so two runs triggered together cannot both read the
day before either has reserved. A refused run reserves nothing, so it does not count against the day.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from flexflow.publishing.ledger import LEDGER_DIR, ledger_name
from flexflow.publishing.store import MAX_RECORD_BYTES, fresh_listing, read_bounded, target_folder, url_of, write_atomic
from flexflow.spec.budget import NOTHING, Estimate, has_day_caps, over

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Under the ledger's folder of a DAG: one folder per UTC day, one reservation per run that went ahead.
DAYS_DIR = "days"


def dag_ledger(root: str, conn_id: str | None, dag_id: str) -> ObjectStoragePath:
    """The DAG's folder of the ledger under the publish root (its runs' records; its days' reservations)."""
    return target_folder(root, conn_id) / LEDGER_DIR / dag_id


def enforce_budget(
    budget: Mapping[str, Any], context: Context, ledger: ObjectStoragePath, cost: Estimate | None = None
) -> Estimate:
    """Fail the run (no retries) when it would exceed a cap; else reserve its estimate for the day.

    :param budget: ``{"caps": {cap: text}, "estimate": Estimate.to_dict(), "price_per_megapixel": text}``
    :param ledger: the DAG's ledger folder under the publish root (:func:`dag_ledger`)
    :param cost: what this run will submit, when less than the whole estimate (images it reuses cost nothing)
    :returns: the day's estimate so far, this run included
    """
    ti = context["ti"]
    caps: Mapping[str, str] = budget["caps"]
    cost = Estimate.from_dict(budget["estimate"]) if cost is None else cost
    day = run_day(context)
    reservations = ledger / DAYS_DIR / day
    earlier = day_total(read_reservations(reservations), day, ti.run_id) if has_day_caps(caps) else NOTHING
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
    if has_day_caps(caps):
        reservation = {"day": day, "run_id": ti.run_id, "estimate": cost.to_dict()}
        write_atomic(reservations / ledger_name(ti.run_id), json.dumps(reservation, indent=2).encode())
    return earlier + cost


def read_reservations(folder: ObjectStoragePath) -> list[Any]:
    """Every reservation of the day; one that cannot be read refuses the run (money is not guessed at)."""
    records = []
    for file in fresh_listing(folder):
        if not file.name.endswith(".json"):
            continue
        try:
            record = json.loads(read_bounded(file, MAX_RECORD_BYTES))
            Estimate.from_dict(record["estimate"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AirflowFailException(
                f"nothing was submitted: {url_of(file)} is not a budget reservation ({exc!r}), so the day's spend is "
                "unknown; delete or restore it"
            ) from exc
        records.append(record)
    return records


def run_day(context: Context) -> str:
    """The run's UTC day: its logical date, or when it was due to run (a manual run may have no logical date)."""
    dag_run = context["dag_run"]
    when: datetime = dag_run.logical_date or dag_run.run_after
    return when.astimezone(UTC).date().isoformat()


def day_total(records: Iterable[Any] | None, day: str, own_run_id: str) -> Estimate:
    """What the other runs of ``day`` reserved (a record of another day, or not a record, is skipped)."""
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
