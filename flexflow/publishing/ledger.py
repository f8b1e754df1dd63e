"""What each run spent: one ledger record per run beside the target, and the sums ``flexflow report`` prints.

The finalize task writes a record for every run that submitted a job, published or failed (a failed
run writes no manifest, guarantee 2, so the manifest alone cannot say what failures cost):
``<publish root>/.flexflow-ledger/<dag_id>/<run_id>.json``, the publish root being the literal part of
``publish.to`` before its first template. A job is billed when the API charged it (``credit_cost`` > 0);
a billed job whose images were not all published is money spent on nothing: the report names it.

``flexflow report`` reads local ledgers with the standard library; Airflow's object storage (and the
target's connection) is imported only for a target on an object store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flexflow.contract.params import JsonScalar
from flexflow.contract.sizes import billed_megapixels, credit_cost
from flexflow.publishing.paths import literal_prefix
from flexflow.spec import find_spec_files, load_folder

LEDGER_DIR = ".flexflow-ledger"
LEDGER_VERSION = 1
PUBLISHED, FAILED = "published", "failed"
#: A job whose wait ended without an outcome (it FAILED, was CANCELLED, timed out): nothing was billed.
NO_OUTCOME = "NOT_COMPLETED"


class LedgerError(ValueError):
    """A report's input is unusable (no such folder, a spec that does not load); the message says which."""


@dataclass(frozen=True)
class JobSpend:
    """One submitted job of a run and what it cost."""

    job_id: str
    image: str
    variant: str
    status: str
    credits: int
    megapixels: int
    published: bool

    @property
    def billed(self) -> bool:
        return self.credits > 0

    def to_stored(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "image": self.image,
            "variant": self.variant,
            "status": self.status,
            "credits": self.credits,
            "megapixels": self.megapixels,
            "published": self.published,
        }

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> JobSpend:
        return cls(
            str(stored["job_id"]),
            str(stored["image"]),
            str(stored.get("variant", "")),
            str(stored["status"]),
            int(stored["credits"]),
            int(stored.get("megapixels", 0)),
            bool(stored["published"]),
        )


def job_spend(
    job_id: str,
    image: str,
    variant: str,
    outcome: Mapping[str, Any] | None,
    flux: Mapping[str, JsonScalar],
    published: bool,
) -> JobSpend:
    """A job's spend from its wait outcome (a stored ``JobOutcome``) and the flux params it was sent with.

    A COMPLETED job is billed what the API said (``credit_cost``), or the price table's count when the API
    said nothing; a job that did not complete (FAILED, CANCELLED, no outcome) was not billed.
    """
    status = str(outcome["status"]) if outcome else NO_OUTCOME
    reported = outcome.get("credit_cost") if outcome else None
    if status != "COMPLETED":
        credits = int(reported or 0)
    else:
        credits = int(reported) if reported is not None else credit_cost(dict(flux))
    megapixels = billed_megapixels(dict(flux)) if credits else 0
    return JobSpend(job_id, image, variant, status, credits, megapixels, published)


def spend_totals(jobs: Sequence[JobSpend], reused: int = 0) -> dict[str, int]:
    """The manifest's ``spend`` and the ledger's ``totals``: jobs submitted, reused (published again without a
    job: nothing billed), failed; megapixels, credits."""
    return {
        "submitted": len(jobs),
        "reused": reused,
        "failed": sum(1 for job in jobs if not job.published),
        "megapixels": sum(job.megapixels for job in jobs),
        "credits": sum(job.credits for job in jobs),
        "failed_credits": sum(job.credits for job in jobs if not job.published),
    }


def ledger_record(
    dag_id: str, run_id: str, day: date, published: bool, jobs: Sequence[JobSpend], reused: int = 0
) -> dict[str, Any]:
    return {
        "ledger_version": LEDGER_VERSION,
        "dag_id": dag_id,
        "run_id": run_id,
        "day": day.isoformat(),
        "status": PUBLISHED if published else FAILED,
        "jobs": [job.to_stored() for job in jobs],
        "totals": spend_totals(jobs, reused),
    }


def merged_jobs(current: Sequence[JobSpend], earlier: Mapping[str, Any] | None) -> list[JobSpend]:
    """This try's jobs, plus the jobs an earlier finalize of the same run recorded and this one no longer sees.

    Clearing a submit task replaces its job: the replaced one was still paid for, so it stays (unpublished).
    """
    seen = {job.job_id for job in current}
    kept = [] if earlier is None else [JobSpend.from_stored(j) for j in earlier.get("jobs", [])]
    return [*(replace_published(job) for job in kept if job.job_id not in seen), *current]


def replace_published(job: JobSpend) -> JobSpend:
    """A replaced job: its files (if any) were overwritten by its replacement's, so it published nothing."""
    return JobSpend(job.job_id, job.image, job.variant, job.status, job.credits, job.megapixels, False)


def ledger_name(run_id: str) -> str:
    """The record's file name: the run id with every character a file name should not hold replaced."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in run_id)
    return f"{safe.lstrip('.')}.json"


# --- reading: flexflow report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRoot:
    """A folder whose ``.flexflow-ledger`` a report reads: a local folder, or an object store URL and the
    Airflow connection that reaches it."""

    local: Path | None
    url: str = ""
    conn_id: str | None = None


def ledger_root(target: str, conn_id: str | None) -> LedgerRoot:
    """A report target: a plain path or a ``file://`` URL, or an object store URL (``s3://bucket/prefix``)."""
    parts = urlsplit(target)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LedgerError(f"{target!r} names another machine ({parts.netloc}); give a local file:// folder")
        return LedgerRoot(Path(unquote(parts.path)))
    if parts.scheme and len(parts.scheme) > 1:  # "C:" is a drive, not a scheme
        if not parts.netloc:
            raise LedgerError(f"{target!r} names no bucket; give {parts.scheme}://bucket/folder")
        return LedgerRoot(None, target, conn_id)
    return LedgerRoot(Path(target))


def ledger_folders(targets: Sequence[str], conn_id: str | None = None) -> list[LedgerRoot]:
    """The folders whose ledgers a report reads: each target folder as given, each spec's publish root.

    A file is a spec; a folder holding a ledger is a target; any other folder holding specs is a specs folder.
    ``conn_id`` reaches the object store targets given as URLs; a spec's publish root comes with its own.
    """
    folders: list[LedgerRoot] = []
    for target in targets:
        root = ledger_root(target, conn_id)
        if root.local is None:
            folders.append(root)
            continue
        path = root.local
        if not path.exists():
            raise LedgerError(f"no such file or folder: {target}")
        specs = [] if (path / LEDGER_DIR).is_dir() else find_spec_files([path])
        if path.is_file() or specs:
            folders.extend(_publish_roots(target, path))
        else:
            folders.append(root)
    return folders


def _publish_roots(target: str, path: Path) -> list[LedgerRoot]:
    """The publish roots (the literal part of publish.to) of the specs in a file or folder."""
    result = load_folder([path])
    if result.problems:
        first = result.problems[0]
        raise LedgerError(
            f"{target}: {len(result.problems)} problem(s) in its specs, the first: {first}; "
            "run `flexflow validate` on it, or give the target folders instead"
        )
    return [ledger_root(literal_prefix(spec.publish.to), spec.publish.conn_id) for spec in result.specs]


def read_records(roots: Iterable[LedgerRoot], since: date | None) -> list[dict[str, Any]]:
    """Every ledger record under the roots (each one's own ``.flexflow-ledger``), from ``since`` on."""
    records: dict[str, dict[str, Any]] = {}
    for root in roots:
        for where, data in _local_records(root.local) if root.local else _stored_records(root):
            record, day = _parse_record(where, data)
            if since is None or day >= since:
                records[where] = record
    return list(records.values())


def _local_records(folder: Path) -> Iterator[tuple[str, bytes]]:
    ledger = folder / LEDGER_DIR
    for file in sorted(ledger.glob("*/*.json")) if ledger.is_dir() else []:
        try:
            yield str(file.resolve()), file.read_bytes()
        except OSError as exc:
            raise LedgerError(f"{file}: cannot read it ({exc.strerror or exc})") from exc


def _stored_records(root: LedgerRoot) -> Iterator[tuple[str, bytes]]:
    """The records under an object store target, read through Airflow's object storage and its connection."""
    from flexflow.publishing.store import (
        MAX_RECORD_BYTES,
        NoSuchConnection,
        read_bounded,
        require_connection,
        target_folder,
        url_of,
    )

    ledger = f"{root.url.rstrip('/')}/{LEDGER_DIR}"
    try:
        require_connection(root.conn_id)
        folder = target_folder(ledger, root.conn_id)
        dags = [dag for dag in folder.iterdir() if dag.is_dir()] if folder.exists() else []
        files = sorted((file for dag in dags for file in dag.iterdir() if file.suffix == ".json"), key=str)
        for file in files:
            yield url_of(file), read_bounded(file, MAX_RECORD_BYTES)
    except NoSuchConnection as exc:
        raise LedgerError(f"{root.url}: {exc}") from exc
    except Exception as exc:  # no credentials, no bucket, a record too large: named, not a traceback
        via = f" with the connection {root.conn_id!r}" if root.conn_id else " (no --conn-id given)"
        raise LedgerError(f"{ledger}: cannot read it{via}: {type(exc).__name__}: {exc}") from exc


def _parse_record(where: str, data: bytes) -> tuple[dict[str, Any], date]:
    """A ledger record and its day; anything else is named, with what to do."""
    try:
        record = json.loads(data.decode("utf-8"))
        day = date.fromisoformat(str(record["day"]))
        for job in record["jobs"]:
            JobSpend.from_stored(job)
        str(record["dag_id"])
        int(record.get("totals", {}).get("reused", 0))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LedgerError(f"{where}: not a ledger record ({exc!r}); move it away or delete it") from exc
    return record, day


@dataclass
class Sums:
    """Runs, jobs, failed jobs, reused images' jobs, credits, megapixels and the cost of jobs not published."""

    runs: int = 0
    failed_runs: int = 0
    jobs: int = 0
    failed_jobs: int = 0
    credits: int = 0
    megapixels: int = 0
    failed_credits: int = 0
    failed_megapixels: int = 0
    reused_jobs: int = 0  # published again from an earlier run's files: nothing billed

    def add(self, record: Mapping[str, Any]) -> None:
        jobs = [JobSpend.from_stored(j) for j in record.get("jobs", [])]
        self.runs += 1
        self.failed_runs += record.get("status") != PUBLISHED
        self.jobs += len(jobs)
        self.failed_jobs += sum(1 for j in jobs if not j.published)
        self.credits += sum(j.credits for j in jobs)
        self.megapixels += sum(j.megapixels for j in jobs)
        self.failed_credits += sum(j.credits for j in jobs if not j.published)
        self.failed_megapixels += sum(j.megapixels for j in jobs if not j.published)
        self.reused_jobs += int(record.get("totals", {}).get("reused", 0))

    def described(self, price: Decimal) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "failed_runs": self.failed_runs,
            "jobs": self.jobs,
            "failed_jobs": self.failed_jobs,
            "credits": self.credits,
            "megapixels": self.megapixels,
            "cost": str(price * self.megapixels),
            "failed_credits": self.failed_credits,
            "failed_cost": str(price * self.failed_megapixels),
            "reused_jobs": self.reused_jobs,
        }


@dataclass
class Report:
    price: Decimal
    total: Sums = field(default_factory=Sums)
    by_spec: dict[str, Sums] = field(default_factory=dict)
    by_day: dict[str, Sums] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "price_per_megapixel": str(self.price),
            "total": self.total.described(self.price),
            "by_spec": {k: v.described(self.price) for k, v in sorted(self.by_spec.items())},
            "by_day": {k: v.described(self.price) for k, v in sorted(self.by_day.items())},
            "top_specs": [dag_id for dag_id, _ in self.top_specs()],
        }

    def top_specs(self, count: int = 5) -> list[tuple[str, Sums]]:
        return sorted(self.by_spec.items(), key=lambda item: (-item[1].credits, item[0]))[:count]


def summed(records: Iterable[Mapping[str, Any]], price: Decimal) -> Report:
    report = Report(price)
    for record in records:
        report.total.add(record)
        report.by_spec.setdefault(str(record["dag_id"]), Sums()).add(record)
        report.by_day.setdefault(str(record["day"]), Sums()).add(record)
    return report


def render_report(report: Report) -> str:
    """The report as text: totals, per spec, per day, then where the money went."""
    price = report.price
    total = report.total
    lines = [
        f"{total.runs} run(s), {total.jobs} job(s) ({total.failed_jobs} not published): {total.credits} credits, "
        f"{total.megapixels} billed megapixels, ${price * total.megapixels:.2f} at ${price} per megapixel",
        f"{total.reused_jobs} job(s) not paid again: their images were reused from earlier runs",
        "",
        *_table("spec", report.by_spec, price),
        "",
        *_table("day", report.by_day, price),
        "",
        "where the money went:",
    ]
    for dag_id, sums in report.top_specs():
        share = f"{100 * sums.credits / total.credits:.0f}%" if total.credits else "-"
        lines.append(f"  {dag_id}: {sums.credits} credits ({share}), ${price * sums.megapixels:.2f}")
    lines.append(
        f"  jobs billed but not published: {total.failed_credits} credits, ${price * total.failed_megapixels:.2f}"
    )
    return "\n".join(lines)


def _table(heading: str, rows: Mapping[str, Sums], price: Decimal) -> list[str]:
    header = (heading, "runs", "failed runs", "jobs", "failed jobs", "credits", "cost", "failed cost")
    body = [
        (
            key,
            str(s.runs),
            str(s.failed_runs),
            str(s.jobs),
            str(s.failed_jobs),
            str(s.credits),
            f"${price * s.megapixels:.2f}",
            f"${price * s.failed_megapixels:.2f}",
        )
        for key, s in sorted(rows.items())
    ] or [("(none)", *("0",) * 5, "$0.00", "$0.00")]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in (header, *body)]
