"""flexflow's DAG-folder loader: compiles every spec under FLEXFLOW_SPECS_DIR (default: specs/ beside
this project) into an Airflow DAG. Copy or symlink this file into a DAG bundle to deploy flexflow."""

from __future__ import annotations

from pathlib import Path

from flexflow.compiler.loader import load_dags, specs_dir

# "airflow" and "dag" in this file tell Airflow's safe-mode scan that it defines DAGs.
globals().update(load_dags(specs_dir(default=Path(__file__).resolve().parent.parent / "specs")))
