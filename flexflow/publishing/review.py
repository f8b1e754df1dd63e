"""An approval before publishing (``publish.review: required``), with Airflow's own human-in-the-loop task.

The publish tasks store the run's images in a staging folder under the target
(``<target>/.flexflow-staging/<run>/``); the review task writes the staged manifest and contact sheet
there, then asks a person in Airflow's Required Actions (the standard provider's ``HITLOperator``). While it
waits the task is parked in Airflow's ``awaiting_input`` state: no worker slot, no trigger. Approved, the
finalize task promotes the files into the target, then writes the manifest and sends the Asset event;
rejected or timed out, finalize publishes nothing and fails saying who decided what and why. Nothing is
submitted or billed again for the approval, whatever its answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowFailException

from flexflow.defaults import shown
from flexflow.publishing.contact_sheet import render_contact_sheet
from flexflow.publishing.records import published_jobs, stored_records
from flexflow.publishing.store import target_folder, url_of, write_atomic
from flexflow.spec.checks import CONTACT_SHEET_NAME, MANIFEST_NAME
from flexflow.text import visible

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The folder under the target where a run's images wait for their review, one subfolder per run.
STAGING_DIR = ".flexflow-staging"
#: The XCom (of the review task) naming the staged run's folder, manifest and sheet: the gallery reads it.
STAGING_XCOM_KEY = "staging"
APPROVE, REJECT = "Approve", "Reject"
#: The form's one field: why (shown in the run's log and the failure of a rejected run).
REASON = "reason"
#: How much of the reason the run keeps. Not a form limit: the REST API does not check the form's params,
#: so the task accepts any answer's params (see ``ReviewRunOperator.validate_params_input``) and bounds them.
MAX_REASON_CHARS = 2000
#: How much of a prompt the approval request shows (the contact sheet shows it whole).
PROMPT_SHOWN = 160
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~])")


def staging_folder(folder: str, run_id: str) -> str:
    """The run's staging folder under the target folder: its id made a plain name, a hash keeping ids apart."""
    name = _UNSAFE.sub("_", run_id)[:100].lstrip(".")
    return f"{folder.rstrip('/')}/{STAGING_DIR}/{name}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Decision:
    """What the review task returned: the option chosen, by whom, and why."""

    approved: bool
    by: str
    reason: str
    at: str

    @classmethod
    def from_result(cls, result: object) -> Decision | None:
        """The review task's return value; None when it has none (it failed, timed out or never ran)."""
        if not isinstance(result, Mapping) or not isinstance(result.get("chosen_options"), list):
            return None
        user = result.get("responded_by_user")
        by = str(user.get("name") or user.get("id")) if isinstance(user, Mapping) else "Airflow (a default)"
        params = result.get("params_input")
        reason = params.get(REASON) if isinstance(params, Mapping) else None
        return cls(
            approved=result["chosen_options"] == [APPROVE],
            by=visible(by),
            reason=visible(str(reason or "")[:MAX_REASON_CHARS]).strip(),
            at=str(result.get("responded_at") or ""),
        )

    def said(self) -> str:
        verdict = "approved" if self.approved else "rejected"
        why = f": {self.reason!r}" if self.reason else " (no reason given)"
        return f"{verdict} by {self.by}{why}"


class ReviewRunOperator(HITLOperator):
    """Ask a person to approve the run's staged images before finalize publishes them.

    :param publish_task_ids: the run's publish tasks, whose records say what each staged
    :param expected_files: the run's job count (finalize's check, repeated: a partial run is never offered)
    :param target: the prepare task's result, with the staging folder
    :param conn_id: storage connection for remote targets
    :param response_timeout: the longest wait (``publish.review_timeout``); then the task fails and nothing
        is published
    :param gallery: the run's gallery page under ``[api] base_url``, with ``{DAG_ID}`` and ``{RUN_ID}``
        placeholders; the request links to it (not when ``base_url`` is unset: no page can be named)
    """

    template_fields: Sequence[str] = ("target",)
    ui_color = "#fbe8ff"

    def __init__(
        self,
        *,
        publish_task_ids: Sequence[str],
        expected_files: int,
        target: Mapping[str, Any] | None,
        conn_id: str | None = None,
        response_timeout: timedelta,
        gallery: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)  # a retry would ask again; clearing the task does that on purpose
        # Airflow hands every task its DAG's params (the trigger form's); the approval form shows only its own.
        kwargs.pop("params", None)
        super().__init__(
            subject="Approve images",  # set per run in execute, once the images are known
            options=[APPROVE, REJECT],
            params={
                REASON: Param(
                    None,  # optional: an approval needs no reason (a required field would disable the buttons)
                    type=["null", "string"],
                    title="Reason",
                    description="Why (recorded in the run's log; a rejected run ends with it)",
                )
            },
            response_timeout=response_timeout,
            **kwargs,
        )
        self.publish_task_ids = list(publish_task_ids)
        self.expected_files = expected_files
        self.target = target
        self.conn_id = conn_id
        self.gallery = gallery

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        records = stored_records(ti, self.publish_task_ids)
        missing = self.expected_files - len(published_jobs(records))
        if missing > 0 or not self.target:
            raise AirflowFailException(f"{missing} job(s) did not stage their images; there is nothing to review")
        staged = self._stage(records, context)
        ti.xcom_push(key=STAGING_XCOM_KEY, value=staged)
        self.subject = f"Approve {len(records)} image(s) of {ti.dag_id} for publishing"
        gallery = gallery_url(self.gallery, conf.get("api", "base_url", fallback=None), ti.dag_id, ti.run_id)
        self.body = review_body(records, staged, self.response_timeout, gallery)
        return super().execute(context)

    def validate_params_input(self, params_input: Mapping[str, Any]) -> None:
        """Accept what the answer's params hold, whatever it is.

        The form only sends a string or nothing, but the REST API passes params on unchecked: a reason of
        another type, or a field the form does not have, would fail here a review that was answered.
        :class:`Decision` reads the reason as bounded text and ignores the rest.
        """

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        decision = Decision.from_result(result)
        if decision is not None:
            self.log.info("the run's images were %s", decision.said())
        return result

    def _stage(self, records: list[dict[str, Any]], context: Context) -> dict[str, Any]:
        """The staged run's manifest and contact sheet, beside its images in the staging folder."""
        assert self.target is not None
        folder = target_folder(self.target["staging"], self.conn_id)
        document = {
            "dag_id": context["ti"].dag_id,
            "run_id": context["run_id"],
            "staged_at": datetime.now(UTC).isoformat(),
            "review": "awaiting approval",
            "jobs": len(published_jobs(records)),
            "spend": {"credits": staged_credits(records)},
            "files": records,
        }
        manifest, sheet = folder / MANIFEST_NAME, folder / CONTACT_SHEET_NAME
        write_atomic(sheet, render_contact_sheet(document).encode())
        write_atomic(manifest, json.dumps(document, indent=2).encode())
        self.log.info("staged %d file(s) in %s for review", len(records), url_of(folder))
        return {
            "folder": url_of(folder),
            "manifest": url_of(manifest),
            "contact_sheet": url_of(sheet),
            "conn_id": self.conn_id,
        }


def gallery_url(pattern: str | None, base_url: str | None, dag_id: str, run_id: str) -> str | None:
    """The run's gallery page: ``pattern`` under ``base_url``, the ids percent-encoded whole (a run id is
    anything a trigger said, and the URL stands in the request's Markdown)."""
    if not pattern or not base_url:
        return None
    filled = pattern.replace("{DAG_ID}", quote(dag_id, safe="")).replace("{RUN_ID}", quote(run_id, safe=""))
    return f"{base_url.rstrip('/')}{filled}"


def review_body(
    records: Sequence[Mapping[str, Any]],
    staged: Mapping[str, Any],
    timeout: timedelta | None,
    gallery: str | None = None,
) -> str:
    """The request's Markdown: every staged image, where to see them, the deadline.

    Prompts and names are spec and API text: shown escaped, so none can make a link or an image of its own.
    """
    cost = staged_credits(records)
    lines = [
        f"{len(records)} image(s) wait in the staging folder, {cost} credit(s) already spent; nothing is billed "
        "again, whichever you choose.",
        "",
        *([f"[See them in the gallery]({gallery}) (opens the run's Gallery page).", ""] if gallery else []),
        f"Contact sheet: `{_code(staged['contact_sheet'])}`",
        "",
    ]
    for record in records:
        prompt = str(record.get("prompt", ""))
        excerpt = prompt if len(prompt) <= PROMPT_SHOWN else prompt[: PROMPT_SHOWN - 1] + "…"
        lines.append(
            f"- **{_escaped(record.get('name'))}** ({_escaped(record.get('width'))}x{_escaped(record.get('height'))},"
            f" job `{_code(record.get('job_id'))}`): {_escaped(excerpt)}"
        )
    lines += [
        "",
        "**Approve**: the images are moved into the target, then the manifest and the Asset event. "
        "**Reject**: nothing is published; say why in the reason.",
    ]
    if timeout is not None:
        lines.append(f"Without an answer within {shown(timeout)}, nothing is published.")
    return "\n".join(lines)


def staged_credits(records: Sequence[Mapping[str, Any]]) -> int:
    """What the staged run's jobs cost: each job once (its first image's record), a reused one nothing."""
    return sum(int(r.get("credit_cost") or 0) for r in records if r.get("index", 1) == 1)


def _escaped(value: object) -> str:
    """Markdown-inert text: every punctuation mark Markdown reads is backslash-escaped, on one line."""
    return _MARKDOWN.sub(r"\\\1", " ".join(visible(str(value)).split()))


def _code(value: object) -> str:
    """Text for a code span: one line, no backtick to end it early."""
    return " ".join(visible(str(value)).replace("`", "'").split())
