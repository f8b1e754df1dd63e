"""A validated spec becomes an Airflow DAG: prepare, per image a task group submit -> wait -> publish, then finalize."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import DAG, BaseOperator, TaskGroup, task_group
from airflow.sdk.definitions.xcom_arg import XComArg
from airflow.sdk.exceptions import AirflowFailException

from flexflow.airflow.operators import FluxFlexOperator
from flexflow.airflow.sensors import FluxJobSensor
from flexflow.compiler.docs import broken_description, broken_doc
from flexflow.compiler.layout import (
    FLEXFLOW_TAG,
    VARIANT_FLUX,
    VARIANT_LABEL,
    FromTask,
    FromVariant,
    PlannedGroup,
    PlannedTask,
    task_layout,
)
from flexflow.publishing.operators import FinalizeRunOperator, PreparePublishOperator, PublishImageOperator
from flexflow.publishing.review import ReviewRunOperator
from flexflow.spec.model import Spec
from flexflow.spec.problems import SpecProblem

INVALID_TAG = "invalid"
OPERATORS: dict[str, type[BaseOperator]] = {
    cls.__name__: cls
    for cls in (
        PreparePublishOperator,
        FluxFlexOperator,
        FluxJobSensor,
        PublishImageOperator,
        ReviewRunOperator,
        FinalizeRunOperator,
    )
}


def compile_spec(spec: Spec) -> DAG:
    """The DAG of a spec: an interpretation of its ``task_layout`` (what ``plan`` shows), nothing more."""
    layout = task_layout(spec)
    with DAG(**layout.dag_arguments) as dag:
        prepare = _operator(layout.prepare, {}, {})
        built = {prepare.task_id: prepare}
        for group in layout.groups:
            built.update((task.task_id, task) for task in _group(group, built))
        if layout.review is not None:
            built[layout.review.task_id] = _operator(layout.review, built, {})
        _operator(layout.finalize, built, {})
    return dag


def _group(group: PlannedGroup, outside: Mapping[str, BaseOperator]) -> list[BaseOperator]:
    """The group's tasks; a group with variants is mapped over them (``expand_kwargs`` over the records)."""
    if group.variants is None:
        with TaskGroup(group.group_id):
            return _chain(group.tasks, outside, {})
    built: list[BaseOperator] = []

    def variant_chain(variant: Any, flux_overrides: Any) -> None:
        built.extend(_chain(group.tasks, outside, {VARIANT_LABEL: variant, VARIANT_FLUX: flux_overrides}))

    task_group(group_id=group.group_id)(variant_chain).expand_kwargs([dict(r) for r in group.variants])
    return built


def _chain(
    tasks: Sequence[PlannedTask], outside: Mapping[str, BaseOperator], variant: dict[str, Any]
) -> list[BaseOperator]:
    """The group's tasks in order; ``outside`` are the tasks before the group (prepare) they may read."""
    built: dict[str, BaseOperator] = dict(outside)
    for task in tasks:
        built[task.task_id] = _operator(task, built, variant)
    return [built[task.task_id] for task in tasks]


def _operator(task: PlannedTask, built: Mapping[str, BaseOperator], variant: Mapping[str, Any]) -> BaseOperator:
    """One task, its run-time arguments wired (XComs of upstream tasks, fields of the variant record), then
    its upstream tasks: an XCom argument makes its own edge, an upstream whose result it does not read
    (prepare before submit) needs one of its own."""
    arguments = {name: _argument(value, built, variant) for name, value in task.arguments.items()}
    operator = OPERATORS[task.operator](task_id=task.step, **arguments)
    operator.set_upstream([built[task_id] for task_id in task.upstream])
    return operator


def _argument(value: Any, built: Mapping[str, BaseOperator], variant: Mapping[str, Any]) -> Any:
    if isinstance(value, FromTask):
        return XComArg(built[value.task_id], key=value.key)
    if isinstance(value, FromVariant):
        return variant[value.field]
    return value


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
    with DAG(
        dag_id=dag_id,
        description=broken_description(problems),
        doc_md=broken_doc(problems),
        schedule=None,
        tags=[FLEXFLOW_TAG, INVALID_TAG],
    ) as dag:
        InvalidSpecOperator(task_id="invalid_spec", problems=listed, retries=0)
    return dag
