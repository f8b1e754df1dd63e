"""DAGs of the budget tests (tests/test_budget.py): the specs in tests/specs/budget, compiled by flexflow's
DAG-folder loader ("airflow" and "dag" are named here), and one spec of tests/specs/budget_unchecked compiled
without validation, which would refuse it, so the run-time check is seen to refuse a run on its own."""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import DAG

from flexflow.compiler.dag import compile_spec
from flexflow.compiler.loader import load_dags
from flexflow.spec.build import build_spec
from flexflow.spec.parse import read_mapping


def _unchecked(name: str) -> DAG:
    file = Path(__file__).parent.parent / "specs" / "budget_unchecked" / f"{name}.yaml"
    text = file.read_text()
    data, _ = read_mapping(text, str(file))
    return compile_spec(build_spec(data, text, str(file)))


DAGS: dict[str, DAG] = {
    **load_dags(__file__, "../specs/budget"),
    "flexflow_test_budget_over_run": _unchecked("over_run"),
}
globals().update(DAGS)
