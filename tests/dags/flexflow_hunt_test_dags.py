"""DAGs of the key hunt (tests/test_template_secrets_hunt.py): the spec in tests/specs/secrets_hunt, compiled by
flexflow's DAG-folder loader exactly as a deployment's DAG file would ("airflow" and "dag" are named here)."""

from __future__ import annotations

from airflow.sdk import DAG

from flexflow.compiler.loader import load_dags

DAGS: dict[str, DAG] = load_dags(__file__, "../specs/secrets_hunt")
globals().update(DAGS)
