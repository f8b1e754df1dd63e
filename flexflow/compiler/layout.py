"""The tasks a spec compiles to: one description used both to build the DAG and by ``flexflow plan``."""

from __future__ import annotations

from dataclasses import dataclass

from flexflow.spec.model import Spec

SUBMIT, WAIT, PUBLISH, FINALIZE = "submit", "wait", "publish", "finalize"


@dataclass(frozen=True)
class PlannedTask:
    task_id: str
    kind: str  # submit | wait | publish | finalize
    operator: str
    upstream: tuple[str, ...]
    mapped: int | None  # number of mapped instances (variants), None when not mapped
    image: str | None


def task_layout(spec: Spec) -> list[PlannedTask]:
    """Per image a task group ``<image>``: submit -> wait -> publish; then one ``finalize`` after all."""
    tasks: list[PlannedTask] = []
    for image in spec.images:
        mapped = image.job_count if image.variant_keys else None
        submit, wait, publish = (f"{image.name}.{step}" for step in (SUBMIT, WAIT, PUBLISH))
        tasks += [
            PlannedTask(submit, SUBMIT, "FluxFlexOperator", (), mapped, image.name),
            PlannedTask(wait, WAIT, "FluxJobSensor", (submit,), mapped, image.name),
            PlannedTask(publish, PUBLISH, "PublishImageOperator", (wait,), mapped, image.name),
        ]
    publishes = tuple(t.task_id for t in tasks if t.kind == PUBLISH)
    tasks.append(PlannedTask(FINALIZE, FINALIZE, "FinalizeRunOperator", publishes, None, None))
    return tasks
