"""The DAG-folder loader: every spec in a folder becomes a DAG, and a broken spec never hides the others.

Airflow re-parses DAG files every 30 seconds, so the work here is bounded: when a task runs, only
its own spec is compiled (Airflow's parsing context names the DAG), and specs whose text has not
changed are not validated again (a content-hash cache on disk: the DAG processor parses each file
in a fresh process, so an in-memory cache would not survive).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from airflow.sdk import DAG, get_parsing_context

from flexflow.compiler.dag import compile_broken, compile_spec
from flexflow.compiler.dag_file import SPECS_DIR_ENV
from flexflow.spec.airflow_rules import INVALID_SUFFIX
from flexflow.spec.cache import SpecCache
from flexflow.spec.folder import claimed_dag_id, find_spec_files, load_folder
from flexflow.spec.model import Spec
from flexflow.spec.problems import SpecProblem

#: The flagged DAG shown when the specs folder itself cannot be read (no spec's id is known then).
FOLDER_DAG_ID = "flexflow_specs_folder"


def specs_path(dag_file: str | Path, specs: str) -> Path:
    """``FLEXFLOW_SPECS_DIR`` when set, else ``specs`` resolved against the DAG file's folder."""
    return Path(os.environ.get(SPECS_DIR_ENV) or (Path(dag_file).resolve().parent / specs).resolve())


def load_dags(dag_file: str | Path, specs: str, connection_id: str | None = None) -> dict[str, DAG]:
    """DAGs of every spec at ``specs_path(dag_file, specs)``: a folder of specs or one spec file.

    Broken specs become flagged DAGs that show their problems. Never raises: Airflow would make any
    exception the DAG file's import error and drop every DAG in it, the working ones too.
    """
    folder = specs_path(dag_file, specs)
    try:
        files = _files_to_compile(folder)
    except Exception as exc:  # a folder that cannot be listed is shown, not raised
        return _folder_flagged(folder, f"cannot list the specs folder: {exc}")
    try:
        return compile_files(files, connection_id)
    except Exception as exc:  # compile_files isolates each spec; this is the last net
        return _folder_flagged(folder, f"loading the specs failed: {type(exc).__name__}: {exc}")


def _files_to_compile(folder: Path) -> list[Path]:
    files = find_spec_files([folder]) if folder.exists() else []
    wanted = get_parsing_context().dag_id
    if wanted:
        # A task is running: compile only the files that may define its DAG. A file whose dag_id
        # is not on a plain `dag_id:` line might, so it stays; if no file claims the id (say,
        # `<id>__invalid`), all stay, so the worker builds exactly the DAG the scheduler has.
        claimed = {file: claimed_dag_id(file) for file in files}
        if wanted in claimed.values():
            files = [file for file, dag_id in claimed.items() if dag_id in (wanted, None)]
    return files


def compile_files(files: list[Path], connection_id: str | None = None) -> dict[str, DAG]:
    """DAGs of the given spec files (``connection_id`` replaces the specs' own).

    Each spec is compiled on its own: any exception while building its DAG makes it that spec's
    flagged DAG, with the exception's message, and the others are untouched.
    """
    result = load_folder(files, SpecCache())
    specs = [replace(s, connection_id=connection_id) if connection_id else s for s in result.specs]
    dags = {spec.dag_id: _compiled(spec) for spec in specs}
    for dag_id, problems in result.broken.items():
        broken_id = dag_id if dag_id not in dags else f"{dag_id}{INVALID_SUFFIX}"
        dags[broken_id] = compile_broken(broken_id, problems)
    return dags


def _compiled(spec: Spec) -> DAG:
    try:
        return compile_spec(spec)
    except Exception as exc:  # whatever Airflow refuses stays this spec's problem
        return _flagged(spec.dag_id, spec.path, f"Airflow refused the DAG: {type(exc).__name__}: {exc}")


def _folder_flagged(folder: Path, message: str) -> dict[str, DAG]:
    """The one flagged DAG for a folder that failed as a whole; no DAGs if even that cannot be built."""
    try:
        return {FOLDER_DAG_ID: _flagged(FOLDER_DAG_ID, str(folder), message)}
    except Exception:  # the loader never raises, whatever Airflow does
        return {}


def _flagged(dag_id: str, file: str, message: str) -> DAG:
    return compile_broken(dag_id, [SpecProblem(file, 1, 1, message)])
