"""Loading the tests' DAG files and reading what a run left in the metadata database."""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

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
