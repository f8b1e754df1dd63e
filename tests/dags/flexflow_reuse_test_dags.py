"""DAGs of the reuse tests (tests/test_reuse.py): the specs a test writes to the folder ``FLEXFLOW_SPECS_DIR``
names, compiled by flexflow's DAG-folder loader ("airflow" and "dag" are named here)."""

from __future__ import annotations

from airflow.sdk import DAG

from flexflow.compiler.loader import load_dags

DAGS: dict[str, DAG] = load_dags(__file__, "../specs/reuse")
globals().update(DAGS)
