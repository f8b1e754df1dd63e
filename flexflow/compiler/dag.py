"""A validated spec becomes an Airflow DAG: per image a task group submit -> wait -> publish, then finalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import DAG, BaseOperator, TaskGroup
from airflow.sdk.exceptions import AirflowFailException

from flexflow.airflow.operators import FluxFlexOperator
from flexflow.airflow.sensors import FluxJobSensor
from flexflow.compiler.layout import FINALIZE, PUBLISH, SUBMIT, WAIT
from flexflow.publishing.operators import FinalizeRunOperator, PublishImageOperator
from flexflow.spec.model import ImageSpec, Spec, thawed
from flexflow.spec.problems import SpecProblem

FLEXFLOW_TAG = "flexflow"
INVALID_TAG = "invalid"


def compile_spec(spec: Spec) -> DAG:
    """The DAG of a spec; its tasks are exactly those of ``task_layout`` (what ``plan`` shows).

    That is held by tests/test_golden_dags.py, not checked here: this runs on every DAG parse.
    """
    with DAG(
        dag_id=spec.dag_id,
        description=spec.description,
        doc_md=_doc(spec),
        schedule=spec.schedule,
        start_date=spec.start_date,
        catchup=spec.catchup,
        tags=[*spec.tags, FLEXFLOW_TAG],
        params=thawed(spec.params),
        default_args={"owner": spec.owner},
    ) as dag:
        publishes = [_image_group(spec, image) for image in spec.images]
        FinalizeRunOperator(
            task_id=FINALIZE,
            publish_task_ids=[p.task_id for p in publishes],
            expected_files=spec.job_count,
            to=spec.publish.to,
            conn_id=spec.publish.conn_id,
            asset=spec.publish.asset,
            manifest=spec.publish.manifest,
        ).set_upstream(publishes)
    return dag


def _image_group(spec: Spec, image: ImageSpec) -> Any:
    """Tasks of one image; variants are dynamic task mapping over the variant values, not copies."""
    retry = {"retries": image.retries, "retry_delay": image.retry_delay}
    poll = {"poll_interval": image.poll_interval.total_seconds(), "apiframe_conn_id": spec.connection_id}
    publish_args = {
        "image": image.name,
        "variant_labels": [v.label for v in image.variants],
        "submit_task_id": f"{image.name}.{SUBMIT}",
        "to": spec.publish.to,
        "filename": spec.publish.filename,
        "conn_id": spec.publish.conn_id,
    }
    submit_args = {
        "task_id": SUBMIT,
        "prompt": image.prompt,
        "flux": dict(image.flux),
        "webhook_url": image.webhook_url,
        "job_timeout": image.timeout,
        **poll,
        **retry,
    }
    wait_args = {"task_id": WAIT, "timeout": image.timeout.total_seconds(), **poll, **retry}
    publish_args = {"task_id": PUBLISH, **publish_args, **retry}
    with TaskGroup(image.name):
        if image.variant_keys:
            submitted = FluxFlexOperator.partial(**submit_args).expand(
                flux_overrides=[dict(v.flux) for v in image.variants]
            )
            waited = FluxJobSensor.partial(**wait_args).expand(job_id=submitted.output)
            return PublishImageOperator.partial(**publish_args).expand(job=waited.output)
        # One job: plain tasks, so the graph shows no mapping where there is none.
        submitted = FluxFlexOperator(**submit_args)
        waited = FluxJobSensor(job_id=submitted.output, **wait_args)
        return PublishImageOperator(job=waited.output, **publish_args)


def _doc(spec: Spec) -> str:
    jobs = spec.job_count
    return (
        f"# {spec.dag_id}\n\n{spec.description or ''}\n\n"
        f"Compiled by flexflow from `{spec.path}`: {len(spec.images)} image(s), {jobs} job(s) per run, "
        f"{spec.megapixels:g} MP. Publishes to `{spec.publish.to}`; Asset `{spec.publish.asset}`.\n\n"
        f"```yaml\n{spec.source.rstrip()}\n```\n"
    )


class InvalidSpecOperator(BaseOperator):
    """The only task of a broken spec's DAG: it fails with the spec's problems."""

    ui_color = "#ffd6d6"

    def __init__(self, *, problems: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.problems = list(problems)

    def execute(self, context: Any) -> None:
        raise AirflowFailException("the spec is invalid; fix it and the DAG reloads:\n" + "\n".join(self.problems))


def compile_broken(dag_id: str, problems: Sequence[SpecProblem]) -> DAG:
    """A DAG under the broken spec's id, tagged invalid, whose doc and only task show the problems."""
    listed = [str(p) for p in problems]
    files = sorted({p.file for p in problems})
    with DAG(
        dag_id=dag_id,
        description=f"INVALID flexflow spec ({len(listed)} problem(s)): {listed[0]}"[:250],
        doc_md="# Invalid flexflow spec\n\nFix these problems (`flexflow validate` shows the same):\n\n```\n"
        + "\n".join(listed)
        + "\n```\n\nFiles: "
        + ", ".join(f"`{f}`" for f in files),
        schedule=None,
        tags=[FLEXFLOW_TAG, INVALID_TAG],
    ) as dag:
        InvalidSpecOperator(task_id="invalid_spec", problems=listed, retries=0)
    return dag
