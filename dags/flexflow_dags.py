"""flexflow's DAG file: every spec under FLEXFLOW_SPECS_DIR (default: the path below, relative to
this file) becomes an Airflow DAG. Copy this file into a DAG bundle to deploy flexflow."""

from flexflow.compiler.loader import load_dags

# "airflow" and "dag" in this file tell Airflow's safe-mode scan that it defines DAGs.
globals().update(load_dags(__file__, "../specs"))
