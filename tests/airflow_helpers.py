"""Loading the tests' DAG files and reading what a run left in the metadata database."""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from airflow._shared.timezones import timezone
from airflow.models import import_all_models
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import TriggerEvent
from airflow.utils.session import create_session
from sqlalchemy import select
from sqlalchemy.orm import configure_mappers, joinedload

from flexflow.publishing.paths import literal_prefix
from flexflow.spec import Spec
from tests.conftest import ROOT


def clear_publish_root(spec: Spec) -> None:
    """Nothing published under the spec's publish root: its next run pays for every job. (The example specs fix
    their seeds, so a run reuses what an earlier run, of this test session or another, published there.)"""
    shutil.rmtree(urlsplit(literal_prefix(spec.publish.to)).path, ignore_errors=True)


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_test_dag(dag_id: str) -> Any:
    return load_module(ROOT / "tests/dags/flexflow_test_dags.py").DAGS[dag_id]


def rows(db: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(query, args).fetchall()


def task_states(db: Path, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
    """task_id (with [map_index] when mapped) -> (state, try_number) of a run."""
    found = rows(
        db,
        "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
        dag_id,
        run_id,
    )
    return {(t if m < 0 else f"{t}[{m}]"): (s, n) for t, m, s, n in found}


def xcom(db: Path, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> list[Any]:
    import json

    found = rows(
        db,
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ? ORDER BY map_index",
        dag_id,
        run_id,
        task_id,
        key,
    )
    return [json.loads(value) for (value,) in found]


def ready_to_answer_from_a_thread() -> None:
    """Load every Airflow model and configure their mappers now, in the calling thread: two threads that do
    it lazily at once (``dag.test()`` and a responder) import half-initialised modules."""
    import_all_models()
    configure_mappers()


def answer_review(
    dag_id: str,
    option: str,
    reason: str = "",
    *,
    user: tuple[str, str] = ("reviewer", "Reviewer"),
    task_id: str = "review",
    seen: Callable[[str], dict[str, Any]] | None = None,
    wait: float = 600.0,
) -> dict[str, Any]:
    """Answer a run's review task as Airflow's HITL REST API does, once it is parked waiting for input.

    The same write as the API's ``update_hitl_detail``: the response on the task's HITL detail, then
    Airflow's ``handle_event_submit`` resumes the task (``dag.test()`` or the scheduler runs it on). ``seen``
    is called with the run id first, to look at what the run left while it waited.
    """
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with create_session() as session:
            ti = session.scalar(
                select(TaskInstance)
                .where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.task_id == task_id,
                    TaskInstance.state == "awaiting_input",
                )
                .options(joinedload(TaskInstance.hitl_detail))
            )
            if ti is not None and ti.hitl_detail is not None:
                found = {"state_seen": str(ti.state), "run_id": ti.run_id, **(seen(ti.run_id) if seen else {})}
                detail = ti.hitl_detail
                detail.responded_by = {"id": user[0], "name": user[1]}
                detail.responded_at = timezone.utcnow()
                detail.chosen_options = [option]
                detail.params_input = {"reason": reason}
                session.add(detail)
                handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
                return found
        time.sleep(0.2)
    raise AssertionError(f"{dag_id}: no {task_id} task waited for input within {wait} s")
