"""DAGs of the fault matrix and the soak (tests/test_fault_matrix.py, tests/test_soak.py): the specs in
tests/specs/faults and tests/specs/soak, compiled by flexflow's DAG-folder loader exactly as a
deployment's DAG file would ("airflow" and "dag" are named here)."""

from __future__ import annotations

from airflow.sdk import DAG

from flexflow.compiler.loader import load_dags

DAGS: dict[str, DAG] = {**load_dags(__file__, "../specs/faults"), **load_dags(__file__, "../specs/soak")}
globals().update(DAGS)
