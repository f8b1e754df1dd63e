"""The tasks a spec compiles to, described once: ``flexflow plan`` shows it and the compiler only interprets it.

First one ``prepare``: it renders the target folder and every file name of the run once and checks
them, so a bad target fails the run before anything is submitted (every submit follows it). Then per
image a task group ``<image>``: submit -> wait -> publish. An image with variants is one mapped task
group over its variant records (label and flux overrides together), so every variant has its own
submit -> wait -> publish chain: a failed variant never keeps its siblings' paid images from being
published. Then one ``finalize`` after every group. Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flexflow.airflow.keys import REQUEST_XCOM_KEY, REUSABLE_XCOM_KEY
from flexflow.compiler.docs import plain_text, spec_doc
from flexflow.gallery.links import gallery_href
from flexflow.publishing.paths import literal_prefix
from flexflow.spec import budget
from flexflow.spec.checks import template_params
from flexflow.spec.model import ImageSpec, Spec, thawed
from flexflow.spec.templates import TEMPLATE_FILTERS

PREPARE, SUBMIT, WAIT, PUBLISH, REVIEW, FINALIZE = "prepare", "submit", "wait", "publish", "review", "finalize"
#: Every DAG flexflow compiles carries this tag.
FLEXFLOW_TAG = "flexflow"
#: The fields of a variant record, the arguments of a mapped image group.
VARIANT_LABEL, VARIANT_FLUX = "variant", "flux_overrides"


@dataclass(frozen=True)
class FromTask:
    """An argument filled at run time with an upstream task's XCom (the same map index in a mapped group)."""

    task_id: str
    key: str = "return_value"


@dataclass(frozen=True)
class FromVariant:
    """An argument filled with a field of the mapped group's variant record."""

    field: str


@dataclass(frozen=True)
class PlannedTask:
    task_id: str  # the full id, ``<image>.<step>`` inside a group
    kind: str  # prepare | submit | wait | publish | review | finalize
    operator: str
    arguments: Mapping[str, Any]  # constructor arguments; FromTask/FromVariant values are filled at run time
    upstream: tuple[str, ...]
    mapped: int | None  # the group's mapped instances (variants); None when not mapped
    image: str | None

    @property
    def step(self) -> str:
        """The id inside its group."""
        return self.task_id.rpartition(".")[2]


@dataclass(frozen=True)
class PlannedGroup:
    group_id: str
    variants: tuple[Mapping[str, Any], ...] | None  # the records a mapped group expands over
    tasks: tuple[PlannedTask, ...]


@dataclass(frozen=True)
class Layout:
    dag_arguments: Mapping[str, Any]  # of Airflow's DAG(...)
    prepare: PlannedTask
    groups: tuple[PlannedGroup, ...]
    review: PlannedTask | None  # with ``publish.review: required``
    finalize: PlannedTask

    @property
    def tasks(self) -> list[PlannedTask]:
        review = [self.review] if self.review else []
        return [self.prepare, *(task for group in self.groups for task in group.tasks), *review, self.finalize]


def task_layout(spec: Spec) -> Layout:
    groups = tuple(_image_group(spec, image) for image in spec.images)
    publishes = tuple(group.tasks[-1].task_id for group in groups)
    review = _review(spec, publishes) if spec.publish.review else None
    arguments: dict[str, Any] = {
        "publish_task_ids": list(publishes),
        "expected_files": spec.job_count,
        "target": FromTask(PREPARE),  # the folder prepare rendered once, not a second rendering
        "conn_id": spec.publish.conn_id,
        "asset": spec.publish.asset,
        "manifest": spec.publish.manifest,
        "jobs": _ledger_jobs(spec),  # what each job spent goes to the ledger, published or not
        "ledger_root": literal_prefix(spec.publish.to),
    }
    if review is not None:  # finalize promotes what the review approved, and indexes it for reuse
        arguments["review_task_id"] = REVIEW
        if spec.reuse:
            arguments["reuse_root"] = literal_prefix(spec.publish.to)
    upstream = (PREPARE, *publishes, *([REVIEW] if review else []))
    finalize = PlannedTask(FINALIZE, FINALIZE, "FinalizeRunOperator", arguments, upstream, None, None)
    return Layout(_dag_arguments(spec), _prepare(spec), groups, review, finalize)


def _review(spec: Spec, publishes: tuple[str, ...]) -> PlannedTask:
    """The approval between the staged images and finalize: Airflow's human-in-the-loop task."""
    arguments = {
        "publish_task_ids": list(publishes),
        "expected_files": spec.job_count,
        "target": FromTask(PREPARE),
        "conn_id": spec.publish.conn_id,
        "response_timeout": spec.publish.review_timeout,
        "gallery": gallery_href("", run=True),
    }
    return PlannedTask(REVIEW, REVIEW, "ReviewRunOperator", arguments, (PREPARE, *publishes), None, None)


def _ledger_jobs(spec: Spec) -> list[dict[str, Any]]:
    """Every job of the run and the tasks (with map index) whose XComs say what it cost, for finalize's ledger."""
    jobs: list[dict[str, Any]] = []
    for image in spec.images:
        mapped = bool(image.variant_keys)
        for index, variant in enumerate(image.variants):
            steps = {step: f"{image.name}.{step}" for step in (SUBMIT, WAIT)}
            jobs.append({"image": image.name, "variant": variant.label, **steps, "map_index": index if mapped else -1})
    return jobs


def _prepare(spec: Spec) -> PlannedTask:
    """The run's first task: the target and every job's file name, rendered once and checked."""
    files = [
        {"image": image.name, "variant": variant.label, "ext": str(flux["output_format"])}
        for image, variant, flux in spec.jobs()
    ]
    used = template_params(spec.publish.to, spec.publish.filename)
    arguments: dict[str, Any] = {
        "to": spec.publish.to,
        "root": literal_prefix(spec.publish.to),
        "filename": spec.publish.filename,
        "files": files,
        "params_used": None if used is None else sorted(used),
    }
    if spec.budget is not None:  # only then: a spec without a budget compiles as before
        cost = budget.estimate(spec, spec.budget.price_per_megapixel)
        arguments["budget"] = {
            "caps": budget.caps(spec.budget),
            "estimate": cost.to_dict(),
            "price_per_megapixel": str(spec.budget.price_per_megapixel),
        }
        if budget.has_day_caps(arguments["budget"]["caps"]):
            # One prepare of the DAG at a time: a run reads the day's reservations and adds its own before
            # the next run reads them, so two runs triggered together cannot both fit under the cap.
            arguments["max_active_tis_per_dag"] = 1
    if spec.reuse:  # only then: a spec that never reuses compiles as before
        arguments["requests"] = [
            {"image": image.name, "variant": variant.label, "prompt": image.prompt, "flux": flux}
            for image, variant, flux in spec.jobs()
        ]
    if spec.budget is not None or spec.reuse:  # where the publish root's ledger and index are read
        arguments["conn_id"] = spec.publish.conn_id
    if spec.publish.review:  # the images are stored in a staging folder until approved
        arguments["review"] = True
    return PlannedTask(PREPARE, PREPARE, "PreparePublishOperator", arguments, (), None, None)


def _dag_arguments(spec: Spec) -> dict[str, Any]:
    return {
        "dag_id": spec.dag_id,
        "description": plain_text(spec.description),
        "doc_md": spec_doc(spec),
        "schedule": spec.schedule,
        "start_date": spec.start_date,
        "catchup": spec.catchup,
        "tags": [*spec.tags, FLEXFLOW_TAG],
        "params": thawed(spec.params),
        "default_args": {"owner": plain_text(spec.owner)},
        "user_defined_filters": TEMPLATE_FILTERS,  # ds_add, strftime, a bounded replace
        "user_defined_macros": {"dag_id": spec.dag_id},  # Airflow 3's task context has no dag_id
    }


def _image_group(spec: Spec, image: ImageSpec) -> PlannedGroup:
    mapped = image.job_count if image.variant_keys else None
    submit, wait, publish = (f"{image.name}.{step}" for step in (SUBMIT, WAIT, PUBLISH))
    retry = {"retries": image.retries, "retry_delay": image.retry_delay}
    api = {
        "apiframe_conn_id": spec.connection_id,
        "poll_interval": image.poll_interval.total_seconds(),
        "deferrable": True,  # waits hold no worker slot: that is what the triggerer is for
        "pool": spec.pool,  # its slots cap the jobs in flight: the pool must count deferred tasks
    }
    submit_args = {
        "prompt": image.prompt,
        "flux": thawed(image.flux),
        "webhook_url": image.webhook_url,
        "webhook_events": list(image.webhook_events) if image.webhook_events else None,
        "job_timeout": image.timeout,
        # The submit task holds its pool slot until its job has ended, so no other submit takes it
        # while the job is still in flight; the wait task then finds the job ended and reports it.
        "wait_for_completion": True,
        "return_job_id": True,
        **api,
        **retry,
    }
    publish_args = {
        "job": FromTask(wait),
        "request": FromTask(submit, REQUEST_XCOM_KEY),
        "target": FromTask(PREPARE),
        "image": image.name,
        "variant": FromVariant(VARIANT_LABEL) if mapped else "",
        "conn_id": spec.publish.conn_id,
        **retry,
    }
    if mapped:
        submit_args[VARIANT_FLUX] = FromVariant(VARIANT_FLUX)
    if spec.reuse:
        # A request prepare found published is skipped by submit (so wait skips too) and copied by publish.
        submit_args["reusable_requests"] = FromTask(PREPARE, REUSABLE_XCOM_KEY)
        publish_args["reusable"] = FromTask(PREPARE, REUSABLE_XCOM_KEY)
        publish_args["reuse_root"] = literal_prefix(spec.publish.to)
        publish_args["trigger_rule"] = "none_failed"
    tasks = (
        PlannedTask(submit, SUBMIT, "FluxFlexOperator", submit_args, (PREPARE,), mapped, image.name),
        PlannedTask(
            wait,
            WAIT,
            "FluxJobSensor",
            {"job_id": FromTask(submit), "timeout": image.timeout.total_seconds(), **api, **retry},
            (submit,),
            mapped,
            image.name,
        ),
        PlannedTask(
            publish, PUBLISH, "PublishImageOperator", publish_args, (wait, submit, PREPARE), mapped, image.name
        ),
    )
    variants = tuple({VARIANT_LABEL: v.label, VARIANT_FLUX: thawed(v.flux)} for v in image.variants)
    return PlannedGroup(image.name, variants if mapped else None, tasks)


def described(value: Any) -> Any:
    """JSON-ready form of an argument, for ``flexflow plan --format json``: durations in seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, FromTask):
        return {"xcom_from": value.task_id, "key": value.key}
    if isinstance(value, FromVariant):
        return {"variant_field": value.field}
    if isinstance(value, Mapping):
        return {str(k): described(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [described(v) for v in value]
    return value
