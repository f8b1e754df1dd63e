"""DAGs of the publishing tests (tests/test_publishing.py): the specs in tests/specs/publish, compiled by
flexflow's DAG-folder loader exactly as a deployment's DAG file would ("airflow" and "dag" are named here)."""

from __future__ import annotations

from airflow.sdk import DAG

from flexflow.compiler.loader import load_dags

DAGS: dict[str, DAG] = load_dags(__file__, "../specs/publish")
globals().update(DAGS)
