"""Publishing tasks: store each finished job's images, then the run's manifest and Asset event."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowFailException

from flexflow.airflow.outcome import JobOutcome
from flexflow.contract import output_size
from flexflow.publishing.download import DownloadError, download_image
from flexflow.publishing.store import target_folder, write_atomic

if TYPE_CHECKING:
    from airflow.sdk import Context

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class PublishImageOperator(BaseOperator):
    """Download a finished job's images promptly (signed URLs expire), check them, store them atomically.

    :param job: the job's outcome (the wait task's result, a stored ``JobOutcome``)
    :param request: the request body as sent (the submit task's ``request`` XCom: prompt and flux params)
    :param image: the spec's image name
    :param variant: the variant's ``{variant}`` label ("" when the image has no variants; templated, so a
        mapped task group can pass each variant's own)
    :param to: target folder URL (templated): file://, s3://, gs://
    :param filename: file name pattern (templated), placeholders {image} {variant} {ext} {job_id}
    :param conn_id: storage connection for remote targets
    """

    template_fields: Sequence[str] = ("job", "request", "variant", "to", "filename")
    ui_color = "#e8f7e4"

    def __init__(
        self,
        *,
        job: Mapping[str, Any],
        request: Mapping[str, Any],
        image: str,
        variant: str = "",
        to: str,
        filename: str,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.request = request
        self.image = image
        self.variant = variant
        self.to = to
        self.filename = filename
        self.conn_id = conn_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        outcome = JobOutcome.from_stored(self.job)
        flux = self.request["fluxParams"]
        folder = target_folder(self.to, self.conn_id)
        records = []
        for number, url in enumerate(outcome.images):
            try:
                image = download_image(url, expected_format=flux["output_format"], expected_size=output_size(flux))
            except DownloadError as exc:
                where = f"{exc} (job {outcome.job_id}, image {self.image}{self.variant})"
                if exc.permanent:  # retrying the download cannot bring the result back
                    raise AirflowFailException(f"{where}; clear the submit task to generate it again") from exc
                raise DownloadError(where) from exc
            name = self.filename.format(image=self.image, variant=self.variant, ext=image.format, job_id=outcome.job_id)
            if len(outcome.images) > 1:
                stem, dot, ext = name.rpartition(".")
                name = f"{stem}-{number}{dot}{ext}"
            target = folder / name
            write_atomic(target, image.data)
            self.log.info(
                "stored %s (%dx%d, %d bytes, sha256 %s)",
                target,
                image.width,
                image.height,
                len(image.data),
                image.sha256,
            )
            records.append(
                {
                    "file": str(target),
                    "name": name,
                    "image": self.image,
                    "variant": self.variant,
                    "prompt": self.request["prompt"],
                    "flux": flux,
                    "seed": flux.get("seed"),
                    "job_id": outcome.job_id,
                    "credit_cost": outcome.credit_cost,
                    "sha256": image.sha256,
                    "bytes": image.size_bytes,
                    "width": image.width,
                    "height": image.height,
                    "format": image.format,
                    "published_at": datetime.now(UTC).isoformat(),
                }
            )
        return records


class FinalizeRunOperator(BaseOperator):
    """After every image of the run is stored: write manifest.json, then announce the Asset.

    Runs whatever happened upstream (trigger rule all_done) so that a partly failed run says, in
    this task's log, which files it did store; it then fails without writing the manifest, and
    no Asset event tells downstream DAGs that a half-published run is ready.
    """

    template_fields: Sequence[str] = ("to",)
    ui_color = "#fff4d6"

    def __init__(
        self,
        *,
        publish_task_ids: Sequence[str],
        expected_files: int,
        to: str,
        asset: str,
        conn_id: str | None = None,
        manifest: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(outlets=[Asset(asset)], **kwargs)
        self.publish_task_ids = list(publish_task_ids)
        self.expected_files = expected_files
        self.to = to
        self.asset = asset
        self.conn_id = conn_id
        self.manifest = manifest

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        records = [record for task_id in self.publish_task_ids for record in self._published(ti, task_id)]
        if len(records) < self.expected_files:
            stored = "\n".join(f"  {r['file']}" for r in records) or "  (none)"
            raise AirflowFailException(
                f"{self.expected_files - len(records)} of {self.expected_files} images were not published, "
                f"so no manifest was written and no Asset event sent. Files this run did store:\n{stored}"
            )
        run_id = context["run_id"]
        dag_id = ti.dag_id
        files = [{**record, "dag_id": dag_id, "run_id": run_id} for record in records]
        manifest_path = None
        if self.manifest:
            manifest_path = target_folder(self.to, self.conn_id) / MANIFEST_NAME
            document = {
                "manifest_version": MANIFEST_VERSION,
                "dag_id": dag_id,
                "run_id": run_id,
                "published_at": datetime.now(UTC).isoformat(),
                "asset": self.asset,
                "files": files,
            }
            write_atomic(manifest_path, json.dumps(document, indent=2).encode())
            self.log.info("wrote %s (%d files)", manifest_path, len(files))
        context["outlet_events"][Asset(self.asset)].extra = {
            "run_id": run_id,
            "manifest": str(manifest_path) if manifest_path else None,
            "files": [f["file"] for f in files],
            "job_ids": sorted({f["job_id"] for f in files}),
        }
        return {"manifest": str(manifest_path) if manifest_path else None, "files": len(files)}

    @staticmethod
    def _published(ti: Any, task_id: str) -> list[dict[str, Any]]:
        """Every record a publish task returned: each of its (mapped) instances returned a list."""
        per_instance = ti.xcom_pull(task_ids=[task_id]) or []
        return [record for records in per_instance if records for record in records]
