"""Publishing tasks: store each finished job's images, then the run's manifest and Asset event."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, ObjectStoragePath, TriggerRule
from airflow.sdk.exceptions import AirflowFailException

from flexflow.airflow.keys import REQUEST_XCOM_KEY, REUSABLE_XCOM_KEY
from flexflow.airflow.operators import FluxFlexOperator
from flexflow.airflow.outcome import JobOutcome
from flexflow.client.requests import request_digest
from flexflow.client.results import DownloadedImage, DownloadError, download_image
from flexflow.contract import output_size
from flexflow.publishing.budget import dag_ledger, enforce_budget
from flexflow.publishing.contact_sheet import render_contact_sheet
from flexflow.publishing.ledger import (
    LEDGER_DIR,
    JobSpend,
    job_spend,
    ledger_name,
    ledger_record,
    merged_jobs,
    spend_totals,
)
from flexflow.publishing.paths import (
    JOB_ID,
    PathRefused,
    PlannedFile,
    checked_name,
    numbered,
    planned_target,
    substituted,
)
from flexflow.publishing.records import published_jobs, stored_records
from flexflow.publishing.reuse import (
    Lookup,
    ReuseRefused,
    find_published,
    planned_digest,
    record_published,
    reused_image,
)
from flexflow.publishing.review import Decision, staging_folder
from flexflow.publishing.store import (
    NoSuchConnection,
    promote,
    require_connection,
    target_folder,
    url_of,
    write_atomic,
)
from flexflow.spec.budget import jobs_estimate
from flexflow.spec.checks import CONTACT_SHEET_NAME, MANIFEST_NAME, RUN_FILES

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["MANIFEST_NAME", "FinalizeRunOperator", "PreparePublishOperator", "PublishImageOperator"]

MANIFEST_VERSION = 1
#: How many earlier images ``prepare`` looks up at once (hashing releases the GIL; object stores answer slowly).
REUSE_LOOKUPS_AT_ONCE = 8
#: What the prepare task returns, which publish and finalize read: the folder and each job's file name, and
#: with a review the staging folder the publish tasks store into.
FOLDER, NAMES, STAGING = "folder", "names", "staging"


class PreparePublishOperator(BaseOperator):
    """The run's first task: render the target folder and every file name once, and check them all.

    A clock or a param in ``publish.to`` is rendered here only, so the images and the manifest land in
    one folder; a target or name that could leave the folder, or two jobs sharing a name, fails the run
    before anything is submitted (no retries: the same values fail the same way).

    :param to: target folder URL (templated)
    :param root: the literal part of ``publish.to`` before its first template: the rendered folder stays under it
    :param filename: file name pattern (templated), placeholders {image} {variant} {ext} {job_id}, each replaced
        literally
    :param files: every job of the run as ``{"image", "variant", "ext"}``
    :param params_used: the params ``to`` and ``filename`` read (None: all of them); their values are checked
    :param budget: the spec's caps and one run's estimate (None: no budget); a run over it fails here
        (:mod:`flexflow.publishing.budget`)
    :param requests: with ``reuse``, every job's ``{"image", "variant", "prompt", "flux"}`` (templated):
        each request whose picture is already published under ``root`` is found here, pushed as the
        ``reusable`` XCom for the submit tasks to skip and the publish tasks to copy, and costs nothing
        against the budget (:mod:`flexflow.publishing.reuse`)
    :param conn_id: storage connection for remote targets (where earlier images are looked up)
    :param review: the run's images wait for an approval: they are stored in a staging folder under the
        target (:mod:`flexflow.publishing.review`), named in the result
    """

    template_fields: Sequence[str] = ("to", "filename", "requests")
    ui_color = "#eef3fb"

    def __init__(
        self,
        *,
        to: str,
        root: str,
        filename: str,
        files: Sequence[Mapping[str, str]],
        params_used: Sequence[str] | None,
        budget: Mapping[str, Any] | None = None,
        requests: Sequence[Mapping[str, Any]] | None = None,
        conn_id: str | None = None,
        review: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.review = review
        self.to = to
        self.root = root
        self.filename = filename
        self.files = [dict(file) for file in files]
        self.params_used = None if params_used is None else list(params_used)
        self.budget = None if budget is None else dict(budget)
        self.requests = None if requests is None else [dict(request) for request in requests]
        self.conn_id = conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        given = dict(context["params"])
        used = given if self.params_used is None else {k: given[k] for k in self.params_used if k in given}
        files = [PlannedFile(**file) for file in self.files]
        try:
            require_connection(self.conn_id)
            target = planned_target(self.to, self.root, self.filename, files, used)
        except (NoSuchConnection, PathRefused) as exc:
            raise AirflowFailException(f"nothing was submitted: {exc}") from exc
        to_submit = None if self.requests is None else self._not_published(context)
        if self.budget is not None:
            price = Decimal(self.budget["price_per_megapixel"])
            cost = None if to_submit is None else jobs_estimate((r["flux"] for r in to_submit), price)
            ledger = dag_ledger(self.root, self.conn_id, context["ti"].dag_id)
            day = enforce_budget(self.budget, context, ledger, cost)
            self.log.info("within budget: %d credits, $%.2f for this DAG's runs of the day", day.credits, day.usd)
        if self.review:
            target[STAGING] = staging_folder(target[FOLDER], context["run_id"])
            self.log.info("staging %d file(s) in %s for review", len(files), target[STAGING])
        self.log.info("publishing %d file(s) to %s", len(files), target[FOLDER])
        return target

    def _not_published(self, context: Context) -> list[dict[str, Any]]:
        """The requests to submit: the others' pictures are published already, pushed as the ``reusable`` XCom."""
        requests = self.requests or []
        digests = [planned_digest(request) for request in requests]
        reusable = self._reusable(digests)
        context["ti"].xcom_push(key=REUSABLE_XCOM_KEY, value=reusable)
        to_submit = [request for request, digest in zip(requests, digests, strict=True) if digest not in reusable]
        self.log.info("%d of %d job(s) reuse images already published", len(requests) - len(to_submit), len(requests))
        return to_submit

    def _lookup(self, digest: str) -> Lookup:
        return find_published(self.root, self.conn_id, digest)

    def _reusable(self, digests: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The requests whose pictures are already published under the root: their files, by digest."""
        unique = list(dict.fromkeys(digests))
        # Each lookup reads (and hashes) files, maybe on an object store: side by side, not one after another.
        with ThreadPoolExecutor(max_workers=REUSE_LOOKUPS_AT_ONCE) as pool:
            lookups = dict(zip(unique, pool.map(self._lookup, unique), strict=True))
        reusable = {digest: lookup.files for digest, lookup in lookups.items() if lookup.files is not None}
        for request, digest in zip(self.requests or (), digests, strict=True):
            lookup = lookups[digest]
            then = "reusing it" if lookup.files is not None else "submitting it"
            self.log.info("image %s%s: %s; %s", request["image"], request["variant"], lookup.why, then)
        return reusable


class PublishImageOperator(BaseOperator):
    """Download a finished job's images promptly (signed URLs expire), check them, store them atomically.

    :param job: the job's outcome (the wait task's result, a stored ``JobOutcome``); None when the submit
        task was skipped because the picture is already published: then that image is copied
    :param request: the request body as sent (the submit task's ``request`` XCom: prompt and flux params)
    :param target: the prepare task's result: the checked folder and each job's file name
    :param image: the spec's image name
    :param variant: the variant's ``{variant}`` label ("" when the image has no variants; templated, so a
        mapped task group can pass each variant's own)
    :param conn_id: storage connection for remote targets
    :param reusable: with ``reuse``, the prepare task's ``reusable`` XCom: published files by request digest
    :param reuse_root: with ``reuse``, the publish root whose index records what this task stores
    """

    template_fields: Sequence[str] = ("job", "request", "target", "variant", "reusable")
    ui_color = "#e8f7e4"

    def __init__(
        self,
        *,
        job: Mapping[str, Any] | None,
        request: Mapping[str, Any],
        target: Mapping[str, Any],
        image: str,
        variant: str = "",
        conn_id: str | None = None,
        reusable: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        reuse_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.request = request
        self.target = target
        self.image = image
        self.variant = variant
        self.conn_id = conn_id
        self.reusable = reusable
        self.reuse_root = reuse_root

    def execute(self, context: Context) -> list[dict[str, Any]]:
        digest = request_digest(self.request)
        if self.job is None:
            records = self._copy_published(digest)
        else:
            records = self._store_job(JobOutcome.from_stored(self.job), digest, context)
        if self.reuse_root is not None and STAGING not in self.target:  # staged files are indexed once promoted
            index = record_published(self.reuse_root, self.conn_id, digest, records, self.dag_id, context["run_id"])
            self.log.info("indexed for reuse in %s", url_of(index))
        return records

    def _store_job(self, outcome: JobOutcome, digest: str, context: Context) -> list[dict[str, Any]]:
        flux = self.request["fluxParams"]
        if not outcome.images:
            raise AirflowFailException(self._paid_but_lost(outcome, "empty: it returned no images", context))
        folder = self._folder()
        names = self._names(outcome.job_id, len(outcome.images))
        # Every image of the job is downloaded and checked before any is stored: a job publishes whole.
        images = [self._download(url, number, outcome, flux, context) for number, url in enumerate(outcome.images, 1)]
        records = []
        for number, (name, image) in enumerate(zip(names, images, strict=True), 1):
            target = folder / name
            write_atomic(target, image.data)
            self.log.info(
                "stored %s (%dx%d, %d bytes, sha256 %s)",
                *(url_of(target), image.width, image.height, image.size_bytes, image.sha256),
            )
            job = (outcome.job_id, number, len(images), outcome.credit_cost)
            records.append(self._record(url_of(target), name, image, job, digest))
        return records

    def _copy_published(self, digest: str) -> list[dict[str, Any]]:
        """The submit task was skipped: the picture is published already, so its files are copied, checked whole."""
        files = sorted((self.reusable or {}).get(digest) or (), key=lambda file: int(file["index"]))
        if not files or self.reuse_root is None:
            raise AirflowFailException(
                f"{self._which()}: no job was submitted and no published image stands for this request "
                f"(sha256 {digest}); clear the run from its prepare task to look again or submit it"
            )
        flux = self.request["fluxParams"]
        try:
            images = [
                reused_image(file, self.reuse_root, self.conn_id, flux["output_format"], output_size(dict(flux)))
                for file in files
            ]
        except ReuseRefused as exc:
            raise AirflowFailException(
                f"{self._which()}: {exc} after the prepare task checked it; nothing was written. Clear this run "
                "from its prepare task: it looks again, and a picture it cannot reuse is submitted (one job)"
            ) from exc
        folder = self._folder()
        job_id = str(files[0]["job_id"])
        records = []
        for file, name, image in zip(files, self._names(job_id, len(files)), images, strict=True):
            target = folder / name
            write_atomic(target, image.data)
            self.log.info("reused %s as %s (sha256 %s): nothing billed", file["file"], url_of(target), image.sha256)
            record = self._record(url_of(target), name, image, (job_id, int(file["index"]), len(files), 0), digest)
            records.append({**record, "reused_from": file["file"]})
        return records

    def _folder(self) -> ObjectStoragePath:
        """Where this run's images go: the target, or with a review its staging folder."""
        return target_folder(self.target.get(STAGING) or self.target[FOLDER], self.conn_id)

    def _download(
        self, url: str, number: int, outcome: JobOutcome, flux: Mapping[str, Any], context: Context
    ) -> DownloadedImage:
        """One image, whole and checked; transient faults were retried inside, so what is left fails the try."""
        try:
            return download_image(url, expected_format=flux["output_format"], expected_size=output_size(dict(flux)))
        except DownloadError as exc:
            of = f" (image {number} of {len(outcome.images)})" if len(outcome.images) > 1 else ""
            if exc.permanent:  # retrying the download cannot bring the result back: no retries, say what will
                raise AirflowFailException(self._paid_but_lost(outcome, f"unusable{of}: {exc}", context)) from exc
            raise DownloadError(
                f"{exc} (job {outcome.job_id}, {self._which()}{of}); the task's next try downloads it again"
            ) from exc

    def _record(
        self, file: str, name: str, image: DownloadedImage, job: tuple[str, int, int, int | None], digest: str
    ) -> dict[str, Any]:
        """One stored file, for the manifest. ``job`` is ``(job id, index, job images, credit cost)``: the
        file's ``index`` (from 1) among the images its job returned, and what this run paid for the job."""
        job_id, index, job_images, credit_cost = job
        flux = self.request["fluxParams"]
        return {
            "file": file,
            "name": name,
            "image": self.image,
            "variant": self.variant,
            "prompt": self.request["prompt"],
            "flux": flux,
            "seed": flux.get("seed"),
            "job_id": job_id,
            "index": index,
            "job_images": job_images,
            "credit_cost": credit_cost,
            "request_sha256": digest,
            "sha256": image.sha256,
            "bytes": image.size_bytes,
            "width": image.width,
            "height": image.height,
            "format": image.format,
            "published_at": datetime.now(UTC).isoformat(),
        }

    def _which(self) -> str:
        return f"image {self.image}, variant {self.variant}" if self.variant else f"image {self.image}"

    def _paid_but_lost(self, outcome: JobOutcome, why: str, context: Context) -> str:
        """What happened to a paid result that cannot be published, and exactly what clearing will cost."""
        cost = outcome.credit_cost
        billed = f"{cost} credits" if cost is not None else "its price"
        again = f"about {cost} credits" if cost is not None else "about what this one cost"
        return (
            f"job {outcome.job_id} ({self._which()}) completed and was billed {billed}, but its result is {why}. "
            f"Clear {self._submit_task(context)} with its downstream tasks to generate it again: "
            f"that submits ONE new job, billed {again}."
        )

    def _submit_task(self, context: Context) -> str:
        """The task that submitted this job (an upstream FluxFlexOperator), as a person finds it in the UI."""
        task_ids = sorted(self.upstream_task_ids)
        if self._dag is not None:
            task_ids = [t for t in task_ids if isinstance(self.dag.get_task(t), FluxFlexOperator)]
        submit = next((t for t in task_ids if t.rpartition(".")[2] == "submit"), task_ids[0] if task_ids else None)
        if submit is None:
            return "the submit task"
        ti = context.get("ti")
        map_index = getattr(ti, "map_index", -1)
        return f"`{submit}` (map index {map_index})" if isinstance(map_index, int) and map_index >= 0 else f"`{submit}`"

    def _names(self, job_id: str, count: int) -> list[str]:
        """Each image's file name; numbered when the job returned several, and never another job's name."""
        pattern = self.target[NAMES][self.image][self.variant]
        names = [self._name(pattern, job_id, number if count > 1 else None) for number in range(1, count + 1)]
        others = {n for by_variant in self.target[NAMES].values() for n in by_variant.values()} - {pattern}
        taken = sorted(set(names) & others)
        if taken:
            raise AirflowFailException(
                f"job {job_id} returned {count} images, and {taken[0]!r} is another job's file name; "
                "nothing was written (rename the image or change publish.filename)"
            )
        return names

    @staticmethod
    def _name(pattern: str, job_id: str, number: int | None) -> str:
        """The file's name: the prepared one with the job's id, numbered when a job returns several images.

        Checked again, since the job id comes from the API and the number changes the name.
        """
        name = substituted(pattern, {"job_id": job_id})
        if number is not None:
            name = numbered(name, number)
        try:
            return checked_name(name, reserved=tuple(RUN_FILES))
        except PathRefused as exc:
            where = " (the job id the API returned)" if JOB_ID in pattern else ""
            raise AirflowFailException(f"{exc}{where}; nothing was written") from exc


class FinalizeRunOperator(BaseOperator):
    """After every image of the run is stored: write manifest.json, then announce the Asset.

    Runs whatever happened upstream (trigger rule all_done) so that a partly failed run says, in
    this task's log, which files it did store; it then fails without writing the manifest, and
    no Asset event tells downstream DAGs that a half-published run is ready.
    """

    template_fields: Sequence[str] = ("target",)
    ui_color = "#fff4d6"

    def __init__(
        self,
        *,
        publish_task_ids: Sequence[str],
        expected_files: int,
        target: Mapping[str, Any] | None,
        asset: str,
        conn_id: str | None = None,
        manifest: bool = True,
        jobs: Sequence[Mapping[str, Any]] = (),
        ledger_root: str | None = None,
        review_task_id: str | None = None,
        reuse_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(outlets=[Asset(asset)], **kwargs)
        self.publish_task_ids = list(publish_task_ids)
        # The run's job count: named when each job returned one file. A job may return several; how
        # many it did comes with its publish task's records (``job_images``), and each is counted.
        self.expected_files = expected_files
        self.target = target  # the prepare task's result: the folder the images went to
        self.asset = asset
        self.conn_id = conn_id
        self.manifest = manifest
        # Every job of the run, ``{"image", "variant", "submit", "wait", "map_index"}``: what it spent is
        # recorded in the ledger under ``ledger_root`` (the literal part of publish.to), published or not.
        self.jobs = [dict(job) for job in jobs]
        self.ledger_root = ledger_root
        # With a review: the task whose answer decides, and the root whose reuse index records promoted files.
        self.review_task_id = review_task_id
        self.reuse_root = reuse_root

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        records = stored_records(ti, self.publish_task_ids)
        jobs = published_jobs(records)
        missing = self.expected_jobs - len(jobs)
        decision = None if self.review_task_id is None else Decision.from_result(ti.xcom_pull(self.review_task_id))
        publishing = missing <= 0 and (self.review_task_id is None or (decision is not None and decision.approved))
        reused = {(r["image"], r["variant"]) for r in records if r.get("reused_from")} & jobs.keys()
        paid = {job_id for key, job_id in jobs.items() if key not in reused}
        spent = self._record_spend(
            context, paid if publishing else set(), len(reused) if publishing else 0, published_run=publishing
        )
        if missing > 0:
            stored = "\n".join(f"  {r['file']}" for r in records) or "  (none)"
            raise AirflowFailException(
                f"{missing} of {self.expected_jobs} jobs did not publish all their images, "
                f"so no manifest was written and no Asset event sent. Files this run did store:\n{stored}"
            )
        if not publishing:
            raise AirflowFailException(self._not_approved(decision, spent))
        if self.review_task_id is not None:
            records = self._promote(records, context)
        run_id = context["run_id"]
        dag_id = ti.dag_id
        files = [{**record, "dag_id": dag_id, "run_id": run_id} for record in records]
        manifest_path = sheet_path = None
        if self.manifest:
            if not self.target:  # every image is stored, so prepare did run: its result was cleared since
                raise AirflowFailException("the prepare task's target is gone; clear the whole run to publish again")
            folder = target_folder(self.target[FOLDER], self.conn_id)
            manifest_path, sheet_path = folder / MANIFEST_NAME, folder / CONTACT_SHEET_NAME
            document = {
                "manifest_version": MANIFEST_VERSION,
                "dag_id": dag_id,
                "run_id": run_id,
                "published_at": datetime.now(UTC).isoformat(),
                "asset": self.asset,
                "jobs": len(jobs),
                "spend": spend_totals(spent, len(reused)),
                "files": files,
            }
            # The sheet first: once the manifest (what readers trust) is there, so is the sheet that shows it.
            write_atomic(sheet_path, render_contact_sheet(document).encode())
            write_atomic(manifest_path, json.dumps(document, indent=2).encode())
            self.log.info("wrote %s and %s (%d files)", url_of(manifest_path), sheet_path.name, len(files))
        context["outlet_events"][Asset(self.asset)].extra = {
            "run_id": run_id,
            "manifest": url_of(manifest_path) if manifest_path else None,
            "files": [f["file"] for f in files],
            "job_ids": sorted({f["job_id"] for f in files}),
        }
        return {
            "manifest": url_of(manifest_path) if manifest_path else None,
            "contact_sheet": url_of(sheet_path) if sheet_path else None,
            "conn_id": self.conn_id,  # what reads them back (the gallery) opens them with
            "files": len(files),
            "jobs": len(jobs),
        }

    def _not_approved(self, decision: Decision | None, spent: Sequence[JobSpend]) -> str:
        """Why nothing was published, what the run spent anyway, and how to publish its images after all."""
        staging = (self.target or {}).get(STAGING, "the staging folder")
        credits = sum(job.credits for job in spent)
        if decision is None:
            what = (
                f"The review task `{self.review_task_id}` ended without an answer (it timed out, or failed: "
                "see its log)"
            )
        else:
            what = f"The run's images were {decision.said()}" + (f" at {decision.at}" if decision.at else "")
        return (
            f"{what}. Nothing was published: no image moved into the target, no manifest, no Asset event. "
            f"The run's {len(spent)} job(s) cost {credits} credits (recorded in the ledger); its images stay in "
            f"{staging}. To publish them after all, clear `{self.review_task_id}` and approve: nothing is "
            "submitted or billed again."
        )

    def _promote(self, records: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        """The approved files moved from the staging folder into the target, each whole; then indexed for reuse."""
        if not self.target:
            raise AirflowFailException("the prepare task's target is gone; clear the whole run to publish again")
        folder = target_folder(self.target[FOLDER], self.conn_id)

        def moved(record: dict[str, Any]) -> dict[str, Any]:
            target = folder / record["name"]
            promote(target_folder(record["file"], self.conn_id), target, record["sha256"])
            return {**record, "file": url_of(target)}

        # One copy per file on an object store: side by side, as the reuse lookups are.
        with ThreadPoolExecutor(max_workers=REUSE_LOOKUPS_AT_ONCE) as pool:
            promoted = list(pool.map(moved, records))
        self.log.info("promoted %d approved file(s) into %s", len(promoted), folder)
        staging = target_folder(self.target[STAGING], self.conn_id)
        for name in RUN_FILES:  # the staged manifest and sheet: they showed the images where they were
            (staging / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a local folder, now empty; object stores have no folders
            staging.rmdir()
        if self.reuse_root is not None:
            by_request: dict[str, list[dict[str, Any]]] = {}
            for record in promoted:
                by_request.setdefault(record["request_sha256"], []).append(record)
            for digest, files in by_request.items():
                record_published(self.reuse_root, self.conn_id, digest, files, self.dag_id, context["run_id"])
        return promoted

    def _record_spend(
        self, context: Context, published: set[str], reused: int, *, published_run: bool
    ) -> list[JobSpend]:
        """Every submitted job of the run with what it cost; written to the ledger when any job was submitted
        or reused.

        Written before the manifest and for a failed run too: a run refused before submitting spent nothing
        and writes nothing.
        """
        ti = context["ti"]
        spent = [spend for job in self.jobs if (spend := self._job_spend(ti, job, published)) is not None]
        if self.ledger_root is None or not (spent or reused):
            return spent
        path = target_folder(self.ledger_root, self.conn_id) / LEDGER_DIR / ti.dag_id / ledger_name(context["run_id"])
        spent = merged_jobs(spent, self._earlier_record(path))
        record = ledger_record(ti.dag_id, context["run_id"], run_day(context), published_run, spent, reused)
        write_atomic(path, json.dumps(record, indent=2).encode())
        self.log.info("recorded the run's spend in %s: %s", url_of(path), record["totals"])
        return spent

    def _earlier_record(self, path: ObjectStoragePath) -> dict[str, Any] | None:
        """The record an earlier finalize of this run wrote (the run was cleared since), if it is readable."""
        if not path.exists():
            return None
        try:
            earlier = json.loads(path.read_bytes())
        except ValueError as exc:
            self.log.warning("replacing %s, which is not a ledger record (%s)", path, exc)
            return None
        return earlier if isinstance(earlier, dict) else None

    @staticmethod
    def _job_spend(ti: Any, job: Mapping[str, Any], published: set[str]) -> JobSpend | None:
        """One job's spend from its submit and wait tasks' XComs; None when it was never submitted."""
        index = int(job["map_index"])
        job_id = ti.xcom_pull(task_ids=job["submit"], map_indexes=index)
        if not job_id:
            return None
        request = ti.xcom_pull(task_ids=job["submit"], key=REQUEST_XCOM_KEY, map_indexes=index) or {}
        outcome = ti.xcom_pull(task_ids=job["wait"], map_indexes=index)
        flux = request.get("fluxParams") or {}
        return job_spend(str(job_id), job["image"], job["variant"], outcome, flux, str(job_id) in published)

    @property
    def expected_jobs(self) -> int:
        return self.expected_files


def run_day(context: Context) -> date:
    """The UTC day a run is counted on: its logical date, or when it was queued or started (manual runs)."""
    dag_run = context["dag_run"]
    for when in (context.get("logical_date"), getattr(dag_run, "run_after", None), dag_run.start_date):
        if when is not None:
            return when.astimezone(UTC).date()
    return datetime.now(UTC).date()
