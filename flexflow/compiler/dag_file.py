"""The one DAG-file stub: ``dags/flexflow_dags.py``, the bundle ``flexflow run`` writes and the deployment
harness's bundle are all this text. No Airflow import here, so writing a stub stays cheap."""

from __future__ import annotations

import json

DAG_FILE_NAME = "flexflow_dags.py"
#: Where the DAG file finds its specs, when set (else the path the stub names).
SPECS_DIR_ENV = "FLEXFLOW_SPECS_DIR"


def dag_file_source(specs: str, connection_id: str | None = None) -> str:
    """The text of a DAG file that compiles the specs at ``specs`` (relative to the file, or absolute).

    One stub for every place a DAG file is needed: ``dags/flexflow_dags.py``, the bundle ``flexflow run``
    writes and the deployment harness's bundle. ``FLEXFLOW_SPECS_DIR`` overrides ``specs`` when set;
    ``connection_id`` replaces the specs' own Airflow connection (``flexflow run --connection``).
    """
    # JSON string literals are Python string literals, double-quoted as ruff formats the file.
    arguments = f"__file__, {json.dumps(specs)}" + (
        f", connection_id={json.dumps(connection_id)}" if connection_id else ""
    )
    return (
        '"""flexflow\'s DAG file: every spec under FLEXFLOW_SPECS_DIR (default: the path below, relative to\n'
        'this file) becomes an Airflow DAG. Copy this file into a DAG bundle to deploy flexflow."""\n\n'
        "from flexflow.compiler.loader import load_dags\n\n"
        '# "airflow" and "dag" in this file tell Airflow\'s safe-mode scan that it defines DAGs.\n'
        f"globals().update(load_dags({arguments}))\n"
    )
